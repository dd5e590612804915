#!/usr/bin/env python3
"""edgewatch demo: real Mosquitto + Kafka, the agent and the bridge, real data, a scoreboard.

    make demo            (or: .venv/bin/python deploy/dev/demo.py [--rate 3000] [--keep])

Replays the credit-card data set (../shared/datasets, else the sample shipped in
models/samples) as payments from 16 terminals and, when present, the SKAB files the sensors
model never trained on as one machine each (each learns its baseline from its first 400
readings, which are not scored as detections); prints progress and ends with a scoreboard.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

import paho.mqtt.client as paho  # noqa: E402

from agent.replay import DeviceMessage, messages_from_file  # noqa: E402
from models.bundle import read_unverified  # noqa: E402
from models.metrics import at_threshold  # noqa: E402
from plumbing.mqtt import MqttConnection, paced  # noqa: E402
from plumbing.settings import MqttSettings  # noqa: E402
from tests.conftest import load_stack_module  # noqa: E402

DATASETS = REPO.parent / "shared" / "datasets"
BUNDLES = REPO / "models" / "bundles"
KEY = BUNDLES / "dev-signing-key.DEVELOPMENT-ONLY.pub.pem"
WORK = REPO / ".cache" / "demo"


class Scoreboard:
    def __init__(self) -> None:
        self.scored = self.alerts = self.deadletters = 0
        self.latencies: list[float] = []
        self.verdicts: dict[str, bool] = {}
        self.warming: set[str] = set()  # events scored while their device warmed up
        self.first = self.last = 0.0
        self.lock = threading.Lock()

    def on_message(self, msg: paho.MQTTMessage) -> None:
        kind = msg.topic.split("/")[2]
        now = time.time()
        with self.lock:
            if kind == "scored":
                event = json.loads(msg.payload)
                self.scored += 1
                self.first = self.first or now
                self.last = now
                self.verdicts[event["event_id"]] = event["anomaly"]
                if event.get("warming_up"):
                    self.warming.add(event["event_id"])
                if isinstance(event.get("ts"), float):
                    self.latencies.append(now - event["ts"])
            elif kind == "alerts":
                self.alerts += 1
            elif kind == "deadletter":
                self.deadletters += 1


def config_files(mqtt_port: int, kafka: str, metrics: tuple[int, int]) -> tuple[Path, Path]:
    WORK.mkdir(parents=True, exist_ok=True)
    agent = WORK / "agent.toml"
    agent.write_text(
        f'node_id = "demo-box"\ntrusted_keys = "{KEY}"\nmetrics_port = {metrics[0]}\n'
        f"[mqtt]\nport = {mqtt_port}\n"
        f'[streams.payments]\nbundle = "{BUNDLES / "payments-fraud.ewb"}"\n'
        f'model = "payments-fraud"\n'
        f'[streams.sensors]\nbundle = "{BUNDLES / "sensors-skab.ewb"}"\n'
    )
    bridge = WORK / "bridge.toml"
    bridge.write_text(
        f'node_id = "demo-box"\nmetrics_port = {metrics[1]}\n[mqtt]\nport = {mqtt_port}\n'
        f'[kafka]\nbootstrap_servers = "{kafka}"\n[spool]\npath = "{WORK / "spool.db"}"\n'
    )
    return agent, bridge


def start(module: str, config: Path, name: str) -> subprocess.Popen[bytes]:
    log = (WORK / f"{name}.log").open("ab")
    return subprocess.Popen([sys.executable, "-m", module, "run", "--config", str(config)],
                            stdout=log, stderr=log, cwd=REPO)  # fmt: skip


def metric(port: int, name: str) -> float:
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read()
    except OSError:
        return 0.0
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.decode().splitlines()
               if line.startswith(name))  # fmt: skip


def data() -> tuple[list[tuple[str, DeviceMessage]], str]:
    card = DATASETS / "creditcard" / "creditcard_head.csv"
    source = card if card.exists() else REPO / "models" / "samples" / "payments-holdout.csv"
    messages = [
        ("payments", m) for m in messages_from_file(source, devices=16, device_prefix="terminal")
    ]
    skab = DATASETS / "skab"
    if skab.exists():
        manifest = read_unverified((BUNDLES / "sensors-skab.ewb").read_bytes())[0]
        for name in manifest.training.get("held_out_files", ["valve1/1.csv"]):
            messages += [("sensors", m) for m in messages_from_file(skab / name)]
    return messages, str(
        source.relative_to(REPO.parent) if source.is_relative_to(REPO.parent) else source
    )


def replay(port: int, messages: list[tuple[str, DeviceMessage]], source: str, rate: float,
           board: Scoreboard) -> None:  # fmt: skip
    """Publish at ``rate`` with QoS 1, stamping ts; print progress once a second."""
    print(f"replaying {len(messages)} events from {source} at {rate:.0f}/s …", flush=True)
    settings = MqttSettings(port=port, session_expiry_s=0)  # a publisher keeps no session
    publisher = MqttConnection(settings, f"demo-replay-{time.time_ns()}")
    publisher.start()
    next_report = time.perf_counter()
    sent = []
    for i, (stream, message) in enumerate(paced(messages, rate)):
        document = json.loads(message.payload)
        document["ts"] = time.time()
        sent.append(publisher.client.publish(f"edge/{message.device}/raw/{stream}",
                                             json.dumps(document), qos=1))  # fmt: skip
        if time.perf_counter() >= next_report:
            next_report += 1.0
            print(f"\r  published {i + 1:>6}  scored {board.scored:>6}  alerts {board.alerts:>4}"
                  f"  dead-letters {board.deadletters:>3}", end="", flush=True)  # fmt: skip
    deadline = time.monotonic() + 60  # a loaded box may lag: stop only once all were acked
    for info in sent:
        info.wait_for_publish(max(0.0, deadline - time.monotonic()))
    publisher.stop()


def report(board: Scoreboard, messages: list[tuple[str, DeviceMessage]], rate_asked: float,
           forwarded: float, spool_rows: float) -> None:  # fmt: skip
    latencies = sorted(board.latencies) or [0.0]

    def pick(q: float) -> float:
        return 1000 * latencies[min(len(latencies) - 1, int(q * len(latencies)))]

    rate = board.scored / (board.last - board.first) if board.last > board.first else 0.0
    print("\n============================ edgewatch scoreboard ============================")
    print(f"  events scored        {board.scored:>8}   (of {len(messages)} replayed)")
    print(f"  rate                 {rate:>8.0f} events/s (replayed at {rate_asked:.0f}/s)")
    print(f"  latency p50 / p99    {pick(0.5):>8.2f} / {pick(0.99):.2f} ms  (publish → scored)")
    print(f"  anomalies            {board.alerts:>8}")
    print(f"  dead-letters         {board.deadletters:>8}")
    for stream in sorted({s for s, _ in messages}):
        labels = {m.event_id: m.label for s, m in messages if s == stream and m.label is not None}
        pairs = [(labels[e], v) for e, v in board.verdicts.items()
                 if e in labels and e not in board.warming]  # fmt: skip
        if not pairs:
            continue
        quality = at_threshold([p[0] for p in pairs], [float(p[1]) for p in pairs], 0.5)
        anomalies = sum(p[0] for p in pairs)
        warming = sum(1 for e in board.warming if e in labels)
        after = f", {warming} more warming up" if warming else ""
        print(f"  {stream:<9} precision {quality['precision']:.3f}  recall {quality['recall']:.3f}"
              f"  F1 {quality['f1']:.3f}  ({anomalies} labelled anomalies in {len(pairs)} "
              f"events{after})")  # fmt: skip
    print(f"  into Kafka (bridge)  {forwarded:>8.0f}   spool rows left {spool_rows:.0f}")
    print("  note: the credit-card file includes rows the payments model was trained on;")
    print("        held-out numbers come from edgewatch-models evaluate (see README).")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rate", type=float, default=1500, help="messages per second")
    parser.add_argument("--keep", action="store_true", help="leave the stack running")
    args = parser.parse_args()

    stack_module = load_stack_module()
    stack = stack_module.Stack(REPO / ".cache" / "stack" / "demo")
    metrics = (stack_module.free_port(), stack_module.free_port())
    print("starting Mosquitto and Kafka …", flush=True)
    state = stack.up()
    print(f"  mqtt {state.mqtt_address}   kafka {state.kafka_bootstrap}")
    agent_config, bridge_config = config_files(state.mqtt_port, state.kafka_bootstrap, metrics)
    board = Scoreboard()
    # The watcher's session outlives a reconnect, not the demo.
    watched = MqttSettings(port=state.mqtt_port, receive_maximum=65535, session_expiry_s=10)
    watcher = MqttConnection(watched,
                             f"demo-scoreboard-{time.time_ns()}",
                             subscriptions=[("edge/+/scored/+", 1), ("edge/+/alerts/+", 1),
                                            ("edge/+/deadletter/+", 1)],
                             on_message=board.on_message)  # fmt: skip
    watcher.start()
    agent = start("agent.cli", agent_config, "agent")
    bridge = start("bridge.cli", bridge_config, "bridge")
    time.sleep(3.0)
    messages, source = data()
    replay(state.mqtt_port, messages, source, args.rate, board)
    deadline = time.monotonic() + 60
    while board.scored < len(messages) and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(2.0)  # let the bridge catch up with the last events
    forwarded = metric(metrics[1], "edgewatch_bridge_forwarded_total")
    spool_rows = metric(metrics[1], "edgewatch_bridge_spool_rows")
    print(f"\r  published {len(messages):>6}  scored {board.scored:>6}  alerts {board.alerts:>4}"
          f"  dead-letters {board.deadletters:>3}")  # fmt: skip
    for process in (agent, bridge):
        process.send_signal(signal.SIGTERM)
        process.wait(30)
    watcher.stop()
    if not args.keep:
        stack.down()

    report(board, messages, args.rate, forwarded, spool_rows)
    return 0 if board.scored == len(messages) else 1


if __name__ == "__main__":
    sys.exit(main())
