"""Central preprocess job throughput against a plain confluent-kafka loop.

    python tests/bench/central_throughput.py --json
    python tests/bench/central_throughput.py --json --variant p2:parallelism.default=2

Starts its own stack with the central engine (Kafka, Flink JobManager + TaskManager, SQL
Gateway; ``deploy/dev/stack.py``), fills ``{prefix}.raw.payments`` with ``--events``
credit-card payments (the data set's rows, ids of their own, a card number and holder on
every 10th) and ``{prefix}.labels`` with one label per payment. Then:

1. Warm-up (``--warmup-events``, reported, never part of the headline): job rounds only,
   on the fresh TaskManager, until it has processed that many events. A TaskManager's
   speed keeps rising for several hundred thousand events (class loading, JIT compilation
   of Kafka client, JSON, state and serializer code shared by every job it runs); a
   long-running job sees the warm figure. ``preprocess_cold_events_per_s`` is the first
   warm-up round, ``warmup_rounds`` all of them.
2. ``--rounds`` measured rounds, each alternately (so drift hits all alike):
   a. preprocess: submits ``deploy/central/preprocess_payments.sql`` unchanged (through
      ``models.central.jobs.Jobs``, as ``edgewatch-central jobs up`` does; a consumer group
      of the round's own, so it reads the backlog from the beginning; state starts empty)
      and reads the round's ``train.payments`` topic with read_committed until every
      payment is there, then cancels the job; checkpoints every ``--checkpoint-interval``
      (default: the shipped ``central.checkpoint_interval``, as ``jobs up`` runs it, on
      which the exactly-once sink commits). Rate = rows / span of the rows' Kafka
      timestamps (the sink's send times), so job start-up and the last checkpoint's commit
      wait are not counted and nothing polls the engine meanwhile.
   b. each ``--variant NAME:KEY=VALUE[,KEY=VALUE…]``: the same file with ``SET 'KEY' =
      'VALUE';`` lines added before its ``INSERT`` (over the file's own ``SET`` lines), the
      same measurement; reported under ``variants``, never as the headline.
   c. baseline: one Python process, confluent-kafka consumer → producer, doing the same
      transform without the join (dedupe by event id in a set, drop ``holder``, card number
      to its last four, ``hour_of_day``, ``log_amount``; acks=all, idempotent, no
      transactions) from the same raw topic into a topic of the round's own; same rate.

Headline figures are medians of the measured rounds; every round's figure is in the JSON.
``*_steady_*`` rates leave out each run's first 10 % of rows. Per round the TaskManager's
CPU seconds (``/proc``) and garbage-collection milliseconds (``jstat``), read between
rounds, say where its time went; CPU microseconds per event is the figure other work on
the machine disturbs least. The machine may be shared: ``load_average_1m`` says how busy
it was. ``engine_rss_mb`` is the peak resident memory (VmHWM) of the JobManager and
TaskManager JVMs together after all rounds; the SQL Gateway is reported beside it. The
goal: at least 15,000 events/s, so one job keeps up with a box's bridge at full rate.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common import REPO, peak_rss_mb, steady_harness
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from agent.replay import messages_from_file
from models.central.jobs import Jobs
from models.central.settings import CentralEngineSettings, CentralSettings
from plumbing.events import dumps, loads
from tests.conftest import DATASETS, load_stack_module

GOAL_EVENTS_PER_S = 15_000
JOB = "preprocess_payments"
JOBS_DIR = REPO / "deploy" / "central"
SHIPPED_CHECKPOINT_INTERVAL = str(CentralEngineSettings.model_fields["checkpoint_interval"].default)
PARTITIONS = 3
V = [f"V{k}" for k in range(1, 29)]
NON_DIGIT = re.compile(r"[^0-9]")


@contextlib.contextmanager
def central_stack() -> Iterator[Any]:
    stack = load_stack_module().Stack(Path(tempfile.mkdtemp(prefix="edgewatch-central-bench-")))
    stack.up(central=True)
    try:
        yield stack
    finally:
        stack.destroy()


def payments(count: int) -> list[tuple[bytes, bytes, str]]:
    """(device key, payload, event id): the credit-card rows, cycled, each id unique."""
    source = DATASETS / "creditcard" / "creditcard_head.csv"
    if not source.exists():
        source = REPO / "models" / "samples" / "payments-holdout.csv"
    rows = [loads(m.payload) for m in messages_from_file(source)]
    out = []
    for i in range(count):
        document = {**rows[i % len(rows)], "event_id": f"b{i}", "ts": 1.7e9 + i * 0.01}
        if i % 10 == 0:
            document |= {"card_number": f"4111 1111 1111 {i % 10_000:04d}", "holder": "A B"}
        out.append((f"term-{i % 16}".encode(), dumps(document), f"b{i}"))
    return out


def produce(producer: Producer, topic: str, key: bytes, value: bytes,
            headers: list[tuple[str, bytes]] | None = None) -> None:  # fmt: skip
    """One record; waits for room when the producer's queue is full."""
    while True:
        try:
            producer.produce(topic, key=key, value=value, headers=headers)
            break
        except BufferError:
            producer.poll(0.05)
    producer.poll(0)


def fill(bootstrap: str, raw: str, labels: str, events: list[tuple[bytes, bytes, str]]) -> None:
    """The backlog, written as the bridge (key, event_id header) and back office do."""
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20,
                         "queue.buffering.max.messages": 500_000})  # fmt: skip
    for key, payload, event_id in events:
        headers = [("node_id", b"bench"), ("event_id", event_id.encode())]
        produce(producer, raw, key, payload, headers)
        label = {"event_id": event_id, "label": int(event_id[1:]) % 2, "labelled_at": 1.8e9,
                 "source": "bench"}  # fmt: skip
        produce(producer, labels, event_id.encode(), dumps(label))
    assert producer.flush(120) == 0


def scan(bootstrap: str, topic: str, expected: int, timeout_s: float) -> list[float]:
    """Kafka timestamps (s) of the committed records of ``topic``, up to ``expected`` of
    them: the sink's send times."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": uuid.uuid4().hex,
                         "auto.offset.reset": "earliest", "enable.auto.commit": False,
                         "isolation.level": "read_committed"})  # fmt: skip
    consumer.subscribe([topic])
    stamps: list[float] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(stamps) < expected and time.monotonic() < deadline:
            for message in consumer.consume(10_000, timeout=0.5):
                if message.error() is None:
                    stamps.append(message.timestamp()[1] / 1000)
    finally:
        consumer.close()
    return sorted(stamps)


def rates(stamps: list[float], expected: int, what: str) -> tuple[float, float]:
    """Rows per second over the whole span, and over the span of the last 90 % of the rows
    (without the start-up: JIT compilation, first fetches)."""
    if len(stamps) < expected or stamps[-1] <= stamps[0]:
        raise RuntimeError(f"{what}: {len(stamps)} of {expected} rows in Kafka")
    tenth = len(stamps) // 10
    return (len(stamps) / (stamps[-1] - stamps[0]),
            (len(stamps) - tenth) / (stamps[-1] - stamps[tenth]))  # fmt: skip


def load_average() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def transform(document: Any, device: str, event_id: str, record_ts: float) -> dict[str, Any] | None:
    """preprocess_payments.sql's row without the label columns, in Python."""
    if not isinstance(document, dict) or not event_id:
        return None
    amount = document.get("Amount")
    if not isinstance(amount, int | float) or amount < 0:
        return None
    if any(not isinstance(document.get(name), int | float) for name in V):
        return None
    digits = NON_DIGIT.sub("", str(document.get("card_number") or ""))
    ts = document.get("ts")
    ts = float(ts) if isinstance(ts, int | float) else record_ts
    return {
        "event_id": event_id, "device": device, "ts": ts,
        "card_last4": digits[-4:] if len(digits) >= 12 else None,
        "hour_of_day": int(ts // 3600) % 24, "log_amount": math.log1p(amount),
        **{name: document[name] for name in V}, "Amount": amount,
    }  # fmt: skip


def baseline(bootstrap: str, raw: str, out: str, expected: int, timeout_s: float) -> None:
    """Consume → transform → produce until ``expected`` rows went out."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": uuid.uuid4().hex,
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})  # fmt: skip
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all",
                         "enable.idempotence": True, "linger.ms": 5,
                         "queue.buffering.max.messages": 500_000})  # fmt: skip
    consumer.subscribe([raw])
    seen: set[str] = set()
    deadline = time.monotonic() + timeout_s
    try:
        while len(seen) < expected and time.monotonic() < deadline:
            for message in consumer.consume(1000, timeout=0.5):
                if message.error() is not None:
                    continue
                headers = dict(message.headers() or [])
                event_id = headers.get("event_id", b"").decode()
                if event_id in seen:
                    continue
                try:
                    document = loads(message.value())
                except ValueError:
                    continue
                key = message.key() or b""
                row = transform(document, key.decode(), event_id, message.timestamp()[1] / 1000)
                if row is None:
                    continue
                seen.add(event_id)
                produce(producer, out, key, dumps(row))
    finally:
        consumer.close()
    assert producer.flush(60) == 0


def variant_jobs_dir(name: str, settings: dict[str, str]) -> Path:
    """A jobs directory whose preprocess_payments.sql is the shipped file with ``SET``
    lines for ``settings`` right before its INSERT (so they win over the file's own)."""
    shipped = (JOBS_DIR / f"{JOB}.sql").read_text(encoding="utf-8")
    at = shipped.rindex("\nINSERT INTO")
    lines = "".join(f"\nSET '{key}' = '{value}';" for key, value in settings.items())
    directory = Path(tempfile.mkdtemp(prefix=f"edgewatch-central-bench-{name}-"))
    (directory / f"{JOB}.sql").write_text(shipped[:at] + lines + "\n" + shipped[at:])
    return directory


def parse_variant(text: str) -> tuple[str, dict[str, str]]:
    """``NAME:KEY=VALUE[,KEY=VALUE…]`` → (NAME, {KEY: VALUE})."""
    name, _, body = text.partition(":")
    pairs = [item.partition("=") for item in body.split(",") if item.strip()]
    if not re.fullmatch(r"[a-z0-9_-]+", name) or not pairs or any(not p[1] for p in pairs):
        raise argparse.ArgumentTypeError(f"--variant {text!r}: write NAME:KEY=VALUE[,KEY=VALUE]")
    return name, {key.strip(): value.strip() for key, _, value in pairs}


def taskmanager_usage(stack: Any) -> tuple[float, float]:
    """The TaskManager's CPU seconds (user + system, /proc) and its JVM's garbage
    collection milliseconds (``jstat``'s GCT; NaN when it cannot be read) so far."""
    pid = stack.state.central_pids["taskmanager"]
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu_s = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    try:
        lines = subprocess.run(["jstat", "-gc", str(pid)], capture_output=True, text=True,
                               timeout=30, check=True).stdout.split("\n")  # fmt: skip
        gc_ms = 1000 * float(lines[1].split()[lines[0].split().index("GCT")])
    except (OSError, subprocess.SubprocessError, IndexError, ValueError):
        gc_ms = math.nan
    return cpu_s, gc_ms


@dataclass
class JobRun:
    """One run of the job over the whole backlog."""

    rate: float
    steady_rate: float
    first_row_s: float
    taskmanager_cpu_s: float
    taskmanager_gc_ms: float
    events: int

    @property
    def cpu_us_per_event(self) -> float:
        """TaskManager CPU per event, start-up and final commit included: less sensitive
        to other work on the machine than the rate."""
        return 1e6 * self.taskmanager_cpu_s / self.events

    def summary(self) -> dict[str, float]:
        return {"events_per_s": round(self.rate), "steady_events_per_s": round(self.steady_rate),
                "first_row_after_submit_s": round(self.first_row_s, 1),
                "taskmanager_cpu_s": round(self.taskmanager_cpu_s, 1),
                "taskmanager_cpu_us_per_event": round(self.cpu_us_per_event),
                "taskmanager_gc_ms": None if math.isnan(self.taskmanager_gc_ms)
                else round(self.taskmanager_gc_ms)}  # fmt: skip


def job_round(stack: Any, prefix: str, name: str, interval: str, expected: int, *,
              jobs_dir: Path = JOBS_DIR) -> JobRun:  # fmt: skip
    """The preprocess job over the whole backlog (``expected`` payments) into a topic of
    its own (``name``: its own consumer group, so it starts from the beginning)."""
    state = stack.state
    settings = CentralSettings(
        kafka={"bootstrap_servers": state.kafka_bootstrap},
        central={"sql_gateway": state.sql_gateway, "flink_rest": state.flink_rest,
                 "checkpoint_dir": stack.checkpoint_dir / name, "checkpoint_interval": interval,
                 "jobs_dir": jobs_dir, "topic_prefix": prefix, "train_prefix": name,
                 "group_id_prefix": name, "transactional_id_prefix": name},
    )  # fmt: skip
    jobs = Jobs(settings)
    cpu_before, gc_before = taskmanager_usage(stack)
    submitted_at = time.time()
    jobs.submit(JOB, resume=False)
    train = settings.job_variables(JOB)["train_payments_topic"]
    stamps = scan(state.kafka_bootstrap, train, expected, timeout_s=900)
    jobs.cancel(JOB)
    cpu_after, gc_after = taskmanager_usage(stack)
    rate, steady = rates(stamps, expected, f"preprocess {name}")
    return JobRun(rate, steady, stamps[0] - submitted_at, cpu_after - cpu_before,
                  gc_after - gc_before, expected)  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--events", type=int, default=200_000, help="backlog, per round")
    parser.add_argument("--warmup-events", type=int, default=800_000,
                        help="events the job processes on the fresh TaskManager before the "
                        "measured rounds (in rounds of --events)")  # fmt: skip
    parser.add_argument("--rounds", type=int, default=3, help="measured rounds")
    parser.add_argument("--checkpoint-interval", default=SHIPPED_CHECKPOINT_INTERVAL,
                        help="default: as `jobs up` runs it")  # fmt: skip
    parser.add_argument("--variant", type=parse_variant, action="append", default=[],
                        metavar="NAME:KEY=VALUE[,KEY=VALUE]",
                        help="the job with these SET lines too, each measured round")  # fmt: skip
    args = parser.parse_args()
    if args.rounds < 1 or args.events < 1 or args.warmup_events < 0:
        parser.error("--rounds and --events must be positive, --warmup-events at least 0")
    variants = {name: (options, variant_jobs_dir(name, options)) for name, options in args.variant}
    events = payments(args.events)
    steady_harness()
    with central_stack() as stack:
        state = stack.state
        bootstrap, prefix = state.kafka_bootstrap, f"bench{uuid.uuid4().hex[:6]}"
        raw, labels = f"{prefix}.raw.payments", f"{prefix}.labels"
        admin = AdminClient({"bootstrap.servers": bootstrap})
        for future in admin.create_topics(
            [NewTopic(name, num_partitions=PARTITIONS) for name in (raw, labels)]
        ).values():
            future.result(timeout=30)
        del admin  # an idle client would retry the broker after the stack is gone
        started = time.monotonic()
        fill(bootstrap, raw, labels, events)
        fill_s = time.monotonic() - started

        interval, load = args.checkpoint_interval, [load_average()]
        warmup: list[JobRun] = []
        for round_ in range(math.ceil(args.warmup_events / args.events)):
            warmup.append(job_round(stack, prefix, f"{prefix}-w{round_}", interval, args.events))
        load.append(load_average())
        measured: list[JobRun] = []
        tried: dict[str, list[JobRun]] = {name: [] for name in variants}
        plain_rates: list[tuple[float, float]] = []
        for round_ in range(args.rounds):  # alternating, so drift hits all alike
            measured.append(job_round(stack, prefix, f"{prefix}-r{round_}", interval, args.events))
            for name, (_, directory) in variants.items():
                tried[name].append(job_round(stack, prefix, f"{prefix}-{name}{round_}", interval,
                                             args.events, jobs_dir=directory))  # fmt: skip
            plain = f"{prefix}.baseline{round_}"
            baseline(bootstrap, raw, plain, args.events, timeout_s=900)
            plain_stamps = scan(bootstrap, plain, args.events, timeout_s=120)
            plain_rates.append(rates(plain_stamps, args.events, f"baseline round {round_}"))
            load.append(load_average())
        rss = {name: peak_rss_mb(pid) for name, pid in state.central_pids.items() if pid}
    for _, directory in variants.values():
        shutil.rmtree(directory, ignore_errors=True)
    preprocess = statistics.median(run.rate for run in measured)
    plain_rate = statistics.median(r[0] for r in plain_rates)
    result = {
        "preprocess_events_per_s": round(preprocess),
        "baseline_events_per_s": round(plain_rate),
        "engine_rss_mb": round(rss.get("jobmanager", 0.0) + rss.get("taskmanager", 0.0), 1),
        "preprocess_vs_baseline": round(preprocess / plain_rate, 2),
        "preprocess_steady_events_per_s": round(statistics.median(r.steady_rate for r in measured)),
        "baseline_steady_events_per_s": round(statistics.median(r[1] for r in plain_rates)),
        "preprocess_taskmanager_cpu_us_per_event": round(
            statistics.median(r.cpu_us_per_event for r in measured)
        ),
        "preprocess_cold_events_per_s": round(warmup[0].rate) if warmup else None,
        "goal_events_per_s": GOAL_EVENTS_PER_S,
        "goal_met": preprocess >= GOAL_EVENTS_PER_S,
        "rss_mb": {name: round(value, 1) for name, value in rss.items()},
        "events": args.events,
        "verified_in_kafka": args.events,  # rates() raised unless every payment came out
        "backlog_fill_s": round(fill_s, 1),
        "checkpoint_interval": args.checkpoint_interval,
        "partitions": PARTITIONS,
        "parallelism": 1,
        "warmup_events": len(warmup) * args.events,
        "warmup_rounds": [run.summary() for run in warmup],
        "rounds": {
            "preprocess": [run.summary() for run in measured],
            "baseline": [round(r[0]) for r in plain_rates],
        },
        "variants": {
            name: {
                "set": options,
                "events_per_s": round(statistics.median(r.rate for r in tried[name])),
                "steady_events_per_s": round(statistics.median(r.steady_rate for r in tried[name])),
                "taskmanager_cpu_us_per_event": round(
                    statistics.median(r.cpu_us_per_event for r in tried[name])
                ),
                "vs_preprocess": round(
                    statistics.median(
                        v.rate / m.rate for v, m in zip(tried[name], measured, strict=True)
                    ),
                    2,
                ),
                "rounds": [run.summary() for run in tried[name]],
            }
            for name, (options, _) in variants.items()
        },
        # The machine is shared: the 1-minute load average before the warm-up, after it and
        # after each measured round (2 cores here; well above 2 depresses every figure).
        "load_average_1m": load,
    }
    print(json.dumps(result, indent=2) if args.json else result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
