"""Running edgewatch services as real processes against the test brokers, and watching MQTT."""

from __future__ import annotations

import getpass
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import paho.mqtt.client as paho

from plumbing.mqtt import MqttConnection
from plumbing.settings import MqttSettings
from tests.conftest import load_stack_module

REPO = Path(__file__).resolve().parents[2]
BUNDLES = REPO / "models" / "bundles"
DEV_KEY = BUNDLES / "dev-signing-key.DEVELOPMENT-ONLY.pub.pem"


def private_mosquitto(directory: Path, settings: str) -> tuple[int, subprocess.Popen[bytes]]:
    """A Mosquitto of one test's own: ``settings`` are config lines for its listener."""
    stack = load_stack_module()
    port = stack.free_port()
    (directory / "mosquitto.conf").write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\nuser {getpass.getuser()}\n{settings}"
    )
    proc = subprocess.Popen([stack.ensure_mosquitto(), "-c", str(directory / "mosquitto.conf")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if stack.port_open(port):
            return port, proc
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError("private mosquitto did not start")


def wait_for(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


class ServiceProcess:
    """An edgewatch console script run as `python -m <module> run --config FILE`."""

    def __init__(self, module: str, config: Path, log: Path) -> None:
        self.module = module
        self.config = config
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> ServiceProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEWATCH_")}
        handle = self.log.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", self.module, "run", "--config", str(self.config)],
            stdout=handle, stderr=handle, env=env, cwd=REPO,
        )  # fmt: skip
        return self

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def terminate(self, timeout_s: float = 30) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout_s)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def rss_mb(self) -> float:
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def stop(self) -> None:
        if self.alive():
            try:
                self.terminate(15)
            except subprocess.TimeoutExpired:
                self.kill()

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


class Collector:
    """A QoS 1 subscriber that records what arrives, by topic.

    Its session outlives a reconnect, not the test: a gone collector must not have the
    broker queue messages for it.
    """

    def __init__(self, port: int, filters: list[str]) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self.arrived: list[float] = []  # time.monotonic() of each message, in step
        self._lock = threading.Lock()
        self.connection = MqttConnection(
            MqttSettings(port=port, session_expiry_s=10), f"collector-{uuid.uuid4().hex[:8]}",
            subscriptions=[(f, 1) for f in filters], on_message=self._on_message,
        )  # fmt: skip

    def _on_message(self, msg: paho.MQTTMessage) -> None:
        with self._lock:
            self.messages.append((msg.topic, bytes(msg.payload)))
            self.arrived.append(time.monotonic())

    def __enter__(self) -> Collector:
        self.connection.start()
        time.sleep(0.2)  # let the SUBACK land before anything is published
        return self

    def __exit__(self, *exc: object) -> None:
        self.connection.stop()

    def documents(self, kind: str) -> list[dict]:
        with self._lock:
            items = list(self.messages)
        return [json.loads(p) for t, p in items if t.split("/")[2] == kind and p]

    def count(self, kind: str) -> int:
        with self._lock:
            return sum(1 for t, _ in self.messages if t.split("/")[2] == kind)

    def arrivals(self, kind: str) -> list[float]:
        """When each message of ``kind`` arrived (monotonic seconds)."""
        with self._lock:
            items = list(zip(self.messages, self.arrived, strict=True))
        return [at for (t, _), at in items if t.split("/")[2] == kind]


def agent_config(
    tmp_path: Path, port: int, prefix: str, *, streams: str | None = None, extra: str = "",
    node: str | None = None,
) -> Path:  # fmt: skip
    """``extra``: top-level keys, then any tables (e.g. [rollout]) before [mqtt]."""
    streams = streams or f'[streams.payments]\nbundle = "{BUNDLES / "payments-fraud.ewb"}"\n'
    path = tmp_path / f"agent-{uuid.uuid4().hex[:6]}.toml"
    path.write_text(
        f'node_id = "{node or "node-" + prefix}"\ntrusted_keys = "{DEV_KEY}"\n{extra}\n'
        f'[mqtt]\nport = {port}\ntopic_prefix = "{prefix}"\nclient_id = "agent-{prefix}"\n'
        f"{streams}"
    )
    return path


def start_agent(config: Path, log: Path, collector: Collector, prefix: str) -> ServiceProcess:
    """Start the agent and wait until it announced itself online (its subscriptions exist)."""
    before = len(collector.documents("status"))
    agent = ServiceProcess("agent.cli", config, log).start()
    wait_for(
        lambda: any(d.get("state") == "online" for d in collector.documents("status")[before:])
        or not agent.alive(),
        30, "the agent's online status",
    )  # fmt: skip
    assert agent.alive(), agent.log_text()
    return agent


def publish_all(port: int, items: list[tuple[str, bytes]], rate: float | None = None) -> None:
    """Publish with QoS 1 and wait for every PUBACK."""
    settings = MqttSettings(port=port, session_expiry_s=0)  # a publisher keeps no session
    connection = MqttConnection(settings, f"pub-{uuid.uuid4().hex[:8]}")
    connection.start()
    connection.publish_all(items, rate)
    connection.stop()


def publish_retained(port: int, topic: str, payload: bytes) -> None:
    """One retained QoS 1 publish (an empty payload clears the retained message)."""
    connection = MqttConnection(MqttSettings(port=port, session_expiry_s=0),
                                f"pub-{uuid.uuid4().hex[:8]}")  # fmt: skip
    connection.start()
    connection.publish_and_wait(topic, payload, retain=True)
    connection.stop()


def bridge_config(
    tmp_path: Path,
    mqtt_port: int,
    bootstrap: str,
    prefix: str,
    *,
    spool: str = "",
    extra: str = "",
    metrics_port: int | None = None,
    node: str | None = None,
    kafka_prefix: str | None = None,
    spool_name: str | None = None,
) -> Path:
    """A bridge of its own: unique client id, spool file and Kafka topic names per test
    (``t.{prefix}.*``, or ``{kafka_prefix}.*`` for boxes that share topics)."""
    path = tmp_path / f"bridge-{uuid.uuid4().hex[:6]}.toml"
    topic = kafka_prefix or f"t.{prefix}"
    node = node or f"node-{prefix}"
    metrics = f"metrics_port = {metrics_port}\n" if metrics_port else ""
    path.write_text(
        f'node_id = "{node}"\n{metrics}deadletter_topic = "{topic}.deadletter"\n{extra}\n'
        f'[mqtt]\nport = {mqtt_port}\ntopic_prefix = "{prefix}"\nclient_id = "bridge-{prefix}"\n'
        f'[kafka]\nbootstrap_servers = "{bootstrap}"\n'
        f'[spool]\npath = "{tmp_path / (spool_name or "spool.db")}"\n{spool}\n'
        f'[models]\nkafka_topic = "{topic}.models"\n'
        f'[[routes]]\nfilter = "+/raw/+"\nkind = "raw"\ntopic = "{topic}.raw.{{stream}}"\n'
        "json_event = false\n"
        f'[[routes]]\nfilter = "+/scored/+"\nkind = "scored"\ntopic = "{topic}.scored.{{stream}}"\n'
        f'[[routes]]\nfilter = "+/alerts/+"\nkind = "alerts"\ntopic = "{topic}.alerts"\n'
        f'[[routes]]\nfilter = "+/deadletter/+"\nkind = "deadletter"\n'
        f'topic = "{topic}.deadletter"\n'
        f'[[routes]]\nfilter = "+/status/+"\nkind = "status"\ntopic = "{topic}.status"\n'
        'key = "{device}/{stream}"\n'
        f'[[routes]]\nfilter = "+/rollout/+"\nkind = "rollout"\ntopic = "{topic}.rollouts"\n'
        'key = "{device}/{stream}"\n'
    )
    return path


def start_bridge(config: Path, log: Path, collector: Collector) -> ServiceProcess:
    """Start the bridge and wait for its online status (its subscriptions exist then)."""
    before = [d for d in collector.documents("status") if d.get("service") == "bridge"]
    bridge = ServiceProcess("bridge.cli", config, log).start()

    def online() -> bool:
        docs = [d for d in collector.documents("status") if d.get("service") == "bridge"]
        return len(docs) > len(before) and docs[-1].get("state") == "online"

    wait_for(lambda: online() or not bridge.alive(), 30, "the bridge's online status")
    assert bridge.alive(), bridge.log_text()
    return bridge


def consume(bootstrap: str, topics: list[str], *, until: Callable[[list], bool],
            timeout_s: float = 120) -> list:  # fmt: skip
    """Every record of ``topics`` from the beginning, until ``until(records)`` holds."""
    from confluent_kafka import Consumer

    consumer = Consumer({
        "bootstrap.servers": bootstrap, "group.id": f"check-{uuid.uuid4().hex}",
        "auto.offset.reset": "earliest", "enable.auto.commit": False,
        "topic.metadata.refresh.interval.ms": 1000,
    })  # fmt: skip
    consumer.subscribe(topics)
    records: list = []
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline and not until(records):
            for message in consumer.consume(1000, timeout=0.5):
                if message.error() is None:
                    records.append(message)
    finally:
        consumer.close()
    return records


def scrape(port: int) -> dict[str, float]:
    """Prometheus text format to {sample name with labels: value}."""
    import urllib.request

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples
