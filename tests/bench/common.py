"""Shared pieces of the benchmarks: a private stack, preloading, counting, peak RSS."""

from __future__ import annotations

import contextlib
import gc
import json
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

import paho.mqtt.client as paho

# Observers keep their session long enough for a reconnect, not to pile up messages for
# later rounds after they are gone.
OBSERVER_SESSION_S = 10
REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from plumbing.lifecycle import settle_runtime  # noqa: E402
from plumbing.mqtt import MqttConnection  # noqa: E402
from plumbing.paho_io import BufferedClient, Publish  # noqa: E402
from plumbing.settings import MqttSettings  # noqa: E402
from tests.conftest import load_stack_module  # noqa: E402


def steady_harness() -> None:
    """Keep the harness out of the figures it measures.

    Publisher and counters share this process: a full garbage collection or a 5 ms GIL
    hand-over between their threads would be counted as the service's latency. The harness
    lives minutes, so it does not collect, and it hands the GIL over every 0.5 ms.
    """
    gc.collect()
    gc.freeze()
    gc.disable()
    sys.setswitchinterval(0.0005)


@contextlib.contextmanager
def private_stack() -> Iterator[object]:
    stack = load_stack_module().Stack(Path(tempfile.mkdtemp(prefix="edgewatch-bench-")))
    stack.up()
    try:
        yield stack
    finally:
        stack.destroy()


def messages_until_sigterm(inbox: queue.Queue[paho.MQTTMessage]) -> Iterator[paho.MQTTMessage]:
    """A naive variant's loop: ``inbox`` one message at a time until SIGTERM, in a process
    set up like the services' (``settle_runtime``)."""
    settle_runtime()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    while not stop.is_set():
        try:
            yield inbox.get(timeout=0.2)
        except queue.Empty:
            continue


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


class Counter:
    """Counts QoS 1 arrivals on a filter; remembers arrival times and payload timestamps."""

    def __init__(
        self,
        port: int,
        topic_filter: str,
        keep_ts: bool = False,
        *,
        client_id: str | None = None,
        client_class: type[paho.Client] = BufferedClient,
        bulk: bool = False,
    ) -> None:
        """``client_id`` names a persistent session (default: a fresh observer's). ``bulk``
        decodes and acks whole reads at once (:class:`BufferedClient`): a harness that
        shares the box with the service measured takes less of its CPU."""
        self.count = 0
        self.first = self.last = 0.0
        self.latencies: list[float] = []
        self.keep_ts = keep_ts
        self.done = threading.Event()
        self.target = 0
        settings = (MqttSettings(port=port) if client_id else
                    MqttSettings(port=port, receive_maximum=65535,
                                 session_expiry_s=OBSERVER_SESSION_S))  # fmt: skip
        self.connection = MqttConnection(
            settings, client_id or f"count-{uuid.uuid4().hex[:6]}",
            subscriptions=[(topic_filter, 1)], on_message=self._on_message,
            client_class=client_class,
        )  # fmt: skip
        if bulk:
            client = self.connection.client
            assert isinstance(client, BufferedClient)
            client.on_publish_batch = self._on_publish_batch

    def _on_message(self, msg: paho.MQTTMessage) -> None:
        self._arrived(time.time(), [msg.payload])

    def _on_publish_batch(self, batch: list[Publish]) -> None:
        """A read's QoS 1 messages: counted, then acked as one write."""
        self._arrived(time.time(), [payload for _topic, payload, _mid, _dup in batch])
        client = self.connection.client
        assert isinstance(client, BufferedClient)
        client.ack_many([mid for _topic, _payload, mid, _dup in batch])

    def _arrived(self, now: float, payloads: Sequence[bytes | bytearray]) -> None:
        if self.count == 0:
            self.first = now
        self.count += len(payloads)
        self.last = now
        if self.keep_ts:
            self.latencies.extend(now - json.loads(payload)["ts"] for payload in payloads)
        if self.target and self.count >= self.target:
            self.done.set()

    def __enter__(self) -> Counter:
        self.connection.start()
        time.sleep(0.2)
        return self

    def __exit__(self, *exc: object) -> None:
        self.connection.stop()

    def rate(self) -> float:
        return self.count / (self.last - self.first) if self.last > self.first else 0.0


def publish(port: int, items: list[tuple[str, bytes]], rate: float | None = None,
            stamp: bool = False) -> None:  # fmt: skip
    """QoS 1 publishes (paced if ``rate``), waiting for every PUBACK; ``stamp`` sets ts."""
    settings = MqttSettings(port=port, session_expiry_s=0)  # a publisher keeps no session
    connection = MqttConnection(settings, f"pub-{uuid.uuid4().hex[:6]}", max_inflight=1000)
    connection.start()
    connection.publish_all(
        ((topic, _stamped(body)) for topic, body in items) if stamp else items,
        rate, window=20_000,
    )  # fmt: skip
    connection.stop()


def _stamped(body: bytes) -> bytes:
    """The payload with ``ts`` = now (taken when the paced publisher sends it)."""
    document = json.loads(body)
    document["ts"] = time.time()
    return json.dumps(document).encode()


def run_module(
    args: list[str], log: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    handle = log.open("ab")
    return subprocess.Popen([sys.executable, *args], stdout=handle, stderr=handle, cwd=REPO,
                            env={**os.environ, **(env or {})})  # fmt: skip


def percentile_ms(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2)
