"""Bridge throughput against bare subscribers, a compiled forwarder and a naive bridge.

    python tests/bench/bridge_throughput.py --json

MQTT rates: N raw messages wait in each consumer's persistent session (QoS 1); the
consumer starts and its rate is measured. Two bare subscribers only count: one on paho's
own client (the ceiling the goal names), one on the buffered client the services use
(plumbing.paho_io, fewer system calls per packet), so both ratios are printed. The
bridges' rates are measured in Kafka: every event id is consumed back (acks=all,
idempotent producer) and the rate is the count over the span of the records' timestamps,
so the service is not slowed by polling.
The compiled baseline is ``tests/bench/compiled_forwarder`` (Go: paho.mqtt.golang and
franz-go; acks MQTT after Kafka's acks=all, up to 1,000 in flight, no spool), built here
once into ``.cache/compiled_forwarder`` and measured on the same backlog the same way. Each
side runs with the producer linger that was fastest for it on the 2-core box (3 rounds of a
50k backlog): 5 ms for franz-go (51k msg/s median; 1 ms 37k, 0 26k), 1 ms for the bridge.
Bare subscribers, bridge and compiled forwarder (and with ``--spool-only`` the bridge with
its direct path off) alternate for ``--rounds`` rounds; their figures are medians. Bridge
and compiled swap places every round, and both first forward an unmeasured ``--warmup``
backlog: in runs without it, whichever producer came first after Kafka started was the
slowest of its kind (the bridge's round 1 of the README's table was the one round of three
below the compiled forwarder).
Replay: a spool holding ``--spooled`` rows is sent to Kafka by a bridge started on it;
its peak RSS is measured meanwhile. Outage: a running bridge takes ``--count`` messages
while Kafka is stopped, then Kafka comes back while half as many more arrive; every id is
checked in Kafka. Peak RSS (VmHWM) is reported for every mode: backlog on the direct path,
backlog with the direct path off (``--spool-only``), replay, outage.
``--baseline CHECKOUT`` runs another checkout's bridge (e.g. a ``git worktree`` of an older
commit) through every bridge measurement of the same run, in turn with this one: a
before/after in one run, under the same load (``baseline`` in the JSON).
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import paho.mqtt.client as paho
from common import (
    REPO,
    Counter,
    messages_until_sigterm,
    peak_rss_mb,
    private_stack,
    publish,
    run_module,
    steady_harness,
)

from bridge.spool import Record, Spool
from plumbing.mqtt import MqttConnection
from plumbing.paho_io import BufferedClient
from plumbing.settings import MqttSettings

PAYLOAD = {"pad": 0}  # --payload-pad: characters of filler added to every raw message


def raw_items(prefix: str, count: int) -> list[tuple[str, bytes]]:
    """``count`` raw payments of 16 devices: ~216-byte JSON, plus ``--payload-pad``."""
    out = []
    pad = {"note": "p" * PAYLOAD["pad"]} if PAYLOAD["pad"] else {}
    for i in range(count):
        body = {"event_id": f"b{i}", "ts": 1.7e9 + i, "amount": i % 500 + 0.5,
                **{f"V{k}": round((i * k) % 97 / 10, 2) for k in range(1, 15)}, **pad}  # fmt: skip
        out.append((f"{prefix}/dev{i % 16}/raw/payments", json.dumps(body).encode()))
    return out


def bridge_toml(directory: Path, port: int, bootstrap: str, prefix: str, metrics: int,
                *, direct: bool = True) -> Path:  # fmt: skip
    path = directory / f"{prefix}.toml"
    path.write_text(
        f'node_id = "{prefix}"\nmetrics_port = {metrics}\n'
        f"[direct]\nenabled = {str(direct).lower()}\n"
        f'[mqtt]\nport = {port}\ntopic_prefix = "{prefix}"\nclient_id = "{prefix}"\n'
        f'[kafka]\nbootstrap_servers = "{bootstrap}"\n'
        f'[spool]\npath = "{directory / (prefix + ".db")}"\nmax_bytes = 4294967296\n'
        f"[models]\nenabled = false\n"
        f'[[routes]]\nfilter = "+/raw/+"\nkind = "raw"\ntopic = "{prefix}.raw"\n'
        "json_event = false\n"
    )
    return path


def metric(port: int, name: str) -> float:
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read()
    except OSError:
        return -1.0
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.decode().splitlines()
               if line.startswith(name))  # fmt: skip


def kafka_scan(bootstrap: str, topic: str, expected: int) -> tuple[int, float]:
    """Distinct event ids in ``topic`` and the seconds between its first and last record.

    Record timestamps are the producer's, so the span is the forwarding time itself, with
    no polling of the service (scraping its metrics often would slow it down).
    """
    from confluent_kafka import Consumer

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": uuid.uuid4().hex,
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})  # fmt: skip
    consumer.subscribe([topic])
    seen: set[str] = set()
    first, last = float("inf"), 0.0
    deadline = time.monotonic() + 300
    while len(seen) < expected and time.monotonic() < deadline:
        for message in consumer.consume(5000, timeout=0.5):
            if message.error() is None:
                headers = dict(message.headers() or [])
                seen.add(headers["event_id"].decode() if "event_id" in headers
                         else json.loads(message.value())["event_id"])  # fmt: skip
                stamp = message.timestamp()[1] / 1000
                first, last = min(first, stamp), max(last, stamp)
    consumer.close()
    return len(seen), last - first


def rate_in_kafka(bootstrap: str, topic: str, expected: int, what: str) -> float:
    count, span = kafka_scan(bootstrap, topic, expected)
    if count < expected or span <= 0:
        raise RuntimeError(f"{what}: {count} of {expected} messages in Kafka")
    return count / span


def bare_subscriber(stack: object, count: int, client_class: type[paho.Client]) -> float:
    """A subscriber that only counts (paho acks each message after the callback)."""
    port = stack.state.mqtt_port  # type: ignore[attr-defined]
    prefix = f"bare{uuid.uuid4().hex[:6]}"
    counter = Counter(port, f"{prefix}/#", client_id=prefix, client_class=client_class)
    counter.connection.start()
    counter.connection.stop()  # the session stays, and queues what follows
    publish(port, raw_items(prefix, count))
    counter.target = count
    with counter:
        counter.done.wait(300)
    return counter.rate()


def start_bridge(config: Path, log: Path, checkout: Path = REPO) -> subprocess.Popen[bytes]:
    """``edgewatch-bridge run`` of ``checkout`` (its own ``bridge`` and ``plumbing``)."""
    handle = log.open("ab")
    return subprocess.Popen([sys.executable, "-m", "bridge.cli", "run", "--config", str(config)],
                            stdout=handle, stderr=handle, cwd=checkout)  # fmt: skip


def run_bridge_until(  # noqa: PLR0917 - a benchmark step
    config: Path, metrics: int, workdir: Path, name: str, target: int,
    preload: tuple[int, list] | None = None, checkout: Path = REPO,
) -> float:  # fmt: skip
    """Start the bridge, (optionally) stop it, preload, restart; wait until it forwarded
    ``target`` messages; its peak RSS."""
    if preload is not None:
        proc = start_bridge(config, workdir / f"{name}.log", checkout)
        while metric(metrics, "edgewatch_bridge_mqtt_up") < 1:
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        publish(*preload)
    proc = start_bridge(config, workdir / f"{name}.log", checkout)
    deadline = time.monotonic() + 900
    while metric(metrics, "edgewatch_bridge_forwarded_total") < target:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{name}: Kafka did not acknowledge {target} messages")
        time.sleep(0.5)  # a completion check only: the rate comes from Kafka's timestamps
    rss = peak_rss_mb(proc.pid)
    proc.send_signal(signal.SIGTERM)
    proc.wait(60)
    return rss


COMPILED_SOURCE = REPO / "tests" / "bench" / "compiled_forwarder"
COMPILED_BUILD = REPO / ".cache" / "compiled_forwarder"


def build_compiled() -> Path:
    """``go build`` the compiled forwarder once (again only when its sources changed)."""
    binary = COMPILED_BUILD / "forwarder"
    sources = [p for p in COMPILED_SOURCE.iterdir() if p.suffix in (".go", ".mod", ".sum")]
    if binary.exists() and binary.stat().st_mtime >= max(p.stat().st_mtime for p in sources):
        return binary
    if shutil.which("go") is None:
        raise SystemExit("the compiled baseline needs the Go toolchain (go) on PATH")
    gopath = COMPILED_BUILD / "gopath"  # modules and build cache stay inside .cache/
    env = {**os.environ, "GOPATH": str(gopath), "GOCACHE": str(gopath / "build"),
           "GOFLAGS": "-modcacherw"}  # fmt: skip
    subprocess.run(["nice", "-n", "10", "go", "build", "-o", str(binary), "."],
                   cwd=COMPILED_SOURCE, env=env, check=True)  # fmt: skip
    return binary


def _log_lines(path: Path) -> list[str]:
    return path.read_text(errors="replace").splitlines() if path.exists() else []


def wait_log(log: Path, proc: subprocess.Popen[bytes], done: object, what: str) -> None:
    """Until ``done(lines of log)``; raises if ``proc`` ended or 15 minutes passed."""
    deadline = time.monotonic() + 900
    while not done(_log_lines(log)):  # type: ignore[operator]
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{what} ({log.read_text(errors='replace')[-500:]})")
        time.sleep(0.2)


def compiled_forwarder(stack: object, binary: Path, count: int, workdir: Path, name: str,
                       *, linger: str = "5ms") -> tuple[float, float]:  # fmt: skip
    """The compiled forwarder on a backlog of ``count``: its rate in Kafka and peak RSS."""
    port = stack.state.mqtt_port  # type: ignore[attr-defined]
    bootstrap = stack.state.kafka_bootstrap  # type: ignore[attr-defined]
    args = [str(binary), "--mqtt", f"tcp://127.0.0.1:{port}", "--filter", f"{name}/+/raw/+",
            "--client-id", name, "--bootstrap", bootstrap, "--topic", f"{name}.raw",
            "--linger", linger]  # fmt: skip

    def start(log: Path) -> subprocess.Popen[bytes]:
        handle = log.open("ab")
        return subprocess.Popen(args, stdout=handle, stderr=handle)

    first = workdir / f"{name}-session.log"
    proc = start(first)  # makes the persistent session, then leaves it
    wait_log(first, proc, lambda lines: "subscribed" in lines, f"{name} did not subscribe")
    proc.send_signal(signal.SIGTERM)
    proc.wait(30)
    publish(port, raw_items(name, count))
    log = workdir / f"{name}.log"
    proc = start(log)

    def delivered(lines: list[str]) -> bool:
        counts = [int(line.split()[1]) for line in lines if line.startswith("delivered ")]
        return bool(counts) and counts[-1] >= count

    try:
        wait_log(log, proc, delivered, f"{name}: Kafka did not acknowledge everything")
        rss = peak_rss_mb(proc.pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    return rate_in_kafka(bootstrap, f"{name}.raw", count, "compiled forwarder"), rss


def serve_naive(port: int, bootstrap: str, prefix: str) -> None:
    """Per message: produce, flush (wait for Kafka's ack), then ack on MQTT."""
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all",
                         "enable.idempotence": True})  # fmt: skip
    inbox: queue.Queue[paho.MQTTMessage] = queue.Queue()
    connection = MqttConnection(
        MqttSettings(port=port),
        f"{prefix}-naive",
        manual_ack=True,
        subscriptions=[(f"{prefix}/#", 1)],
        on_message=inbox.put,
    )
    connection.start()
    time.sleep(0.5)  # the SUBACK
    print("subscribed", flush=True)
    for msg in messages_until_sigterm(inbox):
        key = msg.topic.split("/")[1]
        producer.produce(f"{prefix}.raw", value=msg.payload, key=key)
        producer.flush()
        connection.client.ack(msg.mid, 1)
    connection.stop()


def naive_bridge(stack: object, count: int, workdir: Path) -> float:
    port = stack.state.mqtt_port  # type: ignore[attr-defined]
    bootstrap = stack.state.kafka_bootstrap  # type: ignore[attr-defined]
    prefix = f"naive{uuid.uuid4().hex[:6]}"
    args = [__file__, "--serve-naive", str(port), bootstrap, prefix]
    log = workdir / "naive-session.log"
    proc = run_module(args, log)  # makes the persistent session (a busy box starts slowly)
    wait_log(log, proc, lambda lines: "subscribed" in lines, "the naive bridge did not subscribe")
    proc.send_signal(signal.SIGTERM)
    proc.wait(30)
    publish(port, raw_items(prefix, count))
    proc = run_module(args, workdir / "naive.log")
    try:
        return rate_in_kafka(bootstrap, f"{prefix}.raw", count, "naive bridge")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)


def outage(stack: object, count: int, workdir: Path, prefix: str, checkout: Path = REPO) -> float:
    """Kafka down while ``count`` messages arrive, back while ``count // 2`` more do: every
    id must reach Kafka; the bridge's peak RSS."""
    port = stack.state.mqtt_port  # type: ignore[attr-defined]
    bootstrap = stack.state.kafka_bootstrap  # type: ignore[attr-defined]
    from tests.conftest import load_stack_module

    metrics = load_stack_module().free_port()
    config = bridge_toml(workdir, port, bootstrap, prefix, metrics)
    proc = start_bridge(config, workdir / f"{prefix}.log", checkout)
    try:
        while metric(metrics, "edgewatch_bridge_mqtt_up") < 1:
            time.sleep(0.1)
        stack.stop_kafka()  # type: ignore[attr-defined]
        publish(port, raw_items(prefix, count))
        stack.start_kafka()  # type: ignore[attr-defined]
        more = [(topic, body.replace(b'"b', b'"m', 1)) for topic, body in
                raw_items(prefix, count // 2)]  # fmt: skip
        publish(port, more)
        total = count + count // 2
        deadline = time.monotonic() + 900
        while metric(metrics, "edgewatch_bridge_forwarded_total") < total:
            if time.monotonic() > deadline:
                raise RuntimeError("outage: Kafka did not acknowledge everything")
            time.sleep(0.5)
        rss = peak_rss_mb(proc.pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    count_in_kafka, _span = kafka_scan(bootstrap, f"{prefix}.raw", total)
    if count_in_kafka < total:
        raise RuntimeError(f"outage: {count_in_kafka} of {total} messages in Kafka")
    return rss


def fill_spool(path: Path, prefix: str, rows: int) -> None:
    spool = Spool(path, max_bytes=4 << 30, max_age_s=86400)
    template = raw_items(prefix, 1000)
    for start in range(0, rows, 10_000):
        batch = []
        for i in range(start, min(rows, start + 10_000)):
            topic, body = template[i % 1000]
            batch.append(Record("raw", f"{prefix}.raw", topic.split("/")[1].encode(), body,
                                [("event_id", f"s{i}".encode())]))  # fmt: skip
        spool.append(batch)
    spool.close()


def remove_spools(workdir: Path) -> None:
    """The run's spool files (with 1M-row replays: gigabytes); its logs stay."""
    for spool in workdir.glob("*.db*"):
        spool.unlink()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--count", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--naive-count", type=int, default=2_000)
    parser.add_argument("--spooled", type=int, default=1_000_000)
    parser.add_argument(
        "--warmup",
        type=int,
        default=30_000,
        help="backlog forwarded once by the bridge and the compiled forwarder before the "
        "measured rounds, unmeasured (0: none)",
    )
    parser.add_argument(
        "--spool-only",
        action="store_true",
        help="also measure the bridge with its direct path off, each round",
    )
    parser.add_argument(
        "--baseline",
        type=Path,
        help="another checkout whose bridge runs every bridge measurement too, in turn",
    )
    parser.add_argument(
        "--payload-pad",
        type=int,
        default=0,
        help="characters of filler added to every raw message (400: ~620-byte payloads)",
    )
    parser.add_argument("--serve-naive", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    PAYLOAD["pad"] = args.payload_pad
    if args.serve_naive:
        serve_naive(int(args.serve_naive[0]), args.serve_naive[1], args.serve_naive[2])
        return 0
    from tests.conftest import load_stack_module

    free_port = load_stack_module().free_port
    workdir = Path(tempfile.mkdtemp(prefix="edgewatch-bridge-bench-"))
    binary = build_compiled()
    steady_harness()
    with private_stack() as stack:
        state = stack.state  # type: ignore[attr-defined]
        port, bootstrap = state.mqtt_port, state.kafka_bootstrap
        raw_rates, buffered_rates, bridge_rates, compiled_rates = [], [], [], []
        spool_only_rates: list[float] = []
        bridge_rss, compiled_rss, spool_only_rss = [], [], []

        base: dict[str, list[float]] = {}  # the --baseline checkout's figures

        def bridge_on_backlog(name: str, count: int, checkout: Path = REPO,
                              direct: bool = True) -> tuple[float, float]:  # fmt: skip
            metrics = free_port()
            config = bridge_toml(workdir, port, bootstrap, name, metrics, direct=direct)
            rss_ = run_bridge_until(config, metrics, workdir, name, count,
                                    preload=(port, raw_items(name, count)),
                                    checkout=checkout)  # fmt: skip
            return rate_in_kafka(bootstrap, f"{name}.raw", count, name), rss_

        if args.warmup:  # Kafka's JIT and page cache: the first producer of a run was slower
            bridge_on_backlog("warmbridge", args.warmup)
            compiled_forwarder(stack, binary, args.warmup, workdir, "warmcompiled")
        sides = ["bridge", "compiled", *(["baseline"] if args.baseline else [])]
        for round_ in range(args.rounds):  # alternating, so drift hits all alike
            raw_rates.append(bare_subscriber(stack, args.count, paho.Client))
            buffered_rates.append(bare_subscriber(stack, args.count, BufferedClient))
            turn = round_ % len(sides)  # who goes first changes every round
            for side in sides[turn:] + sides[:turn]:
                if side == "bridge":
                    rate, rss_ = bridge_on_backlog(f"benchbridge{round_}", args.count)
                    bridge_rates.append(rate)
                    bridge_rss.append(rss_)
                elif side == "compiled":
                    rate, rss_ = compiled_forwarder(stack, binary, args.count, workdir,
                                                    f"compiled{round_}")  # fmt: skip
                    compiled_rates.append(rate)
                    compiled_rss.append(rss_)
                else:
                    rate, rss_ = bridge_on_backlog(f"basebridge{round_}", args.count,
                                                   args.baseline)  # fmt: skip
                    base.setdefault("bridge", []).append(rate)
                    base.setdefault("bridge_rss", []).append(rss_)
            if args.spool_only:  # the bridge with its direct path off: every message spooled
                rate, rss_ = bridge_on_backlog(f"benchspooled{round_}", args.count, direct=False)
                spool_only_rates.append(rate)
                spool_only_rss.append(rss_)
                if args.baseline:
                    rate, rss_ = bridge_on_backlog(f"basespooled{round_}", args.count,
                                                   args.baseline, direct=False)  # fmt: skip
                    base.setdefault("spool_only", []).append(rate)
                    base.setdefault("spool_only_rss", []).append(rss_)
        raw_rate, bridge_rate = statistics.median(raw_rates), statistics.median(bridge_rates)
        buffered_rate = statistics.median(buffered_rates)
        compiled_rate = statistics.median(compiled_rates)

        naive_rate = naive_bridge(stack, args.naive_count, workdir)
        outage_rss = outage(stack, args.count, workdir, "benchoutage")
        if args.baseline:
            base["outage_rss"] = [outage(stack, args.count, workdir, "baseoutage", args.baseline)]

        prefix, metrics = "benchreplay", free_port()
        config = bridge_toml(workdir, port, bootstrap, prefix, metrics)
        fill_spool(workdir / f"{prefix}.db", prefix, args.spooled)
        rss = run_bridge_until(config, metrics, workdir, "replay", args.spooled)
        replay_rate = rate_in_kafka(bootstrap, f"{prefix}.raw", args.spooled, "replay")
        if args.baseline:
            prefix, metrics = "basereplay", free_port()
            config = bridge_toml(workdir, port, bootstrap, prefix, metrics)
            fill_spool(workdir / f"{prefix}.db", prefix, args.spooled)
            rss_ = run_bridge_until(config, metrics, workdir, prefix, args.spooled,
                                    checkout=args.baseline)  # fmt: skip
            base["replay_rss"] = [rss_]
            base["replay"] = [rate_in_kafka(bootstrap, f"{prefix}.raw", args.spooled, prefix)]
    result = {
        "bridge_msgs_per_s": round(bridge_rate),
        "raw_sub_msgs_per_s": round(raw_rate),
        "buffered_sub_msgs_per_s": round(buffered_rate),
        "compiled_msgs_per_s": round(compiled_rate),
        "naive_msgs_per_s": round(naive_rate),
        "replay_msgs_per_s": round(replay_rate),
        "rss_mb_spooled": round(rss, 1),
        "bridge_peak_rss_mb": round(max(bridge_rss), 1),
        "compiled_peak_rss_mb": round(max(compiled_rss), 1),
        "outage_peak_rss_mb": round(outage_rss, 1),
        "bridge_vs_raw_sub": round(bridge_rate / raw_rate, 3),
        "bridge_vs_buffered_sub": round(bridge_rate / buffered_rate, 3),
        "bridge_vs_compiled": round(bridge_rate / compiled_rate, 3),
        "bridge_vs_naive": round(bridge_rate / naive_rate, 1),
        "verified_in_kafka": args.count,  # rate_in_kafka raised unless every id arrived
        "messages": args.count,
        "payload_bytes": round(sum(len(body) for _, body in raw_items("p", 100)) / 100),
        "spooled": args.spooled,
        "rounds": {
            "bridge": [round(r) for r in bridge_rates],
            "raw_sub": [round(r) for r in raw_rates],
            "buffered_sub": [round(r) for r in buffered_rates],
            "compiled": [round(r) for r in compiled_rates],
            "bridge_peak_rss_mb": [round(r, 1) for r in bridge_rss],
            "compiled_peak_rss_mb": [round(r, 1) for r in compiled_rss],
        },
        **(
            {
                "spool_only_msgs_per_s": round(statistics.median(spool_only_rates)),
                "rounds_spool_only": [round(r) for r in spool_only_rates],
                "spool_only_peak_rss_mb": round(max(spool_only_rss), 1),
                "rounds_spool_only_peak_rss_mb": [round(r, 1) for r in spool_only_rss],
            }
            if spool_only_rates
            else {}
        ),
    }
    if args.baseline:
        result["baseline"] = {
            "checkout": str(args.baseline),
            "bridge_msgs_per_s": round(statistics.median(base["bridge"])),
            "bridge_vs_compiled": round(statistics.median(base["bridge"]) / compiled_rate, 3),
            "bridge_peak_rss_mb": round(max(base["bridge_rss"]), 1),
            "outage_peak_rss_mb": round(base["outage_rss"][0], 1),
            "replay_msgs_per_s": round(base["replay"][0]),
            "rss_mb_spooled": round(base["replay_rss"][0], 1),
            "rounds": {"bridge": [round(r) for r in base["bridge"]],
                       "bridge_peak_rss_mb": [round(r, 1) for r in base["bridge_rss"]]},
            **({"spool_only_msgs_per_s": round(statistics.median(base["spool_only"])),
                "spool_only_peak_rss_mb": round(max(base["spool_only_rss"]), 1),
                "rounds_spool_only": [round(r) for r in base["spool_only"]],
                "rounds_spool_only_peak_rss_mb": [round(r, 1) for r in base["spool_only_rss"]]}
               if "spool_only" in base else {}),
        }  # fmt: skip
    remove_spools(workdir)
    print(json.dumps(result, indent=2) if args.json else result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
