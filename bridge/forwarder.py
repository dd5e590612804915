"""Spool → Kafka: ordered produce, delivery callbacks, watermark deletes, outage probing.

Runs on one thread, which is also the thread that calls ``producer.poll`` and so runs
every delivery callback: no locks around the in-flight bookkeeping. Kafka's own retries
are unbounded (``message.timeout.ms=0``) so the idempotent producer keeps per-partition
order through an outage; the number of messages handed to it is bounded by
``inflight_max``, the rest waits in the spool.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from functools import partial

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from bridge.metrics import BridgeMetrics
from bridge.spool import Record, Spool
from plumbing.settings import LibrdkafkaValue

log = logging.getLogger(__name__)

OUTAGE_CODES = {
    KafkaError._ALL_BROKERS_DOWN,
    KafkaError._TRANSPORT,
    KafkaError._RESOLVE,
    KafkaError._TIMED_OUT,
}
READ_BATCH = 2000
DELETE_EVERY_ROWS = 5000
DELETE_EVERY_S = 0.5


class Backoff:
    """Exponential delays with full jitter between ``low`` and ``high`` seconds."""

    def __init__(self, low: float, high: float) -> None:
        self.low, self.high = low, high
        self.attempt = 0

    def next_delay(self) -> float:
        ceiling = min(self.high, self.low * (2**self.attempt))
        self.attempt += 1
        return random.uniform(self.low, max(self.low, ceiling))

    def reset(self) -> None:
        self.attempt = 0


class Forwarder:
    def __init__(
        self,
        spool: Spool,
        producer_config: dict[str, LibrdkafkaValue],
        metrics: BridgeMetrics,
        *,
        inflight_max: int,
        probe: Backoff,
        on_rejected: Callable[[Record, KafkaError], None],
        on_state: Callable[[bool], None] = lambda up: None,
    ) -> None:
        self.spool = spool
        self.metrics = metrics
        self.inflight_max = inflight_max
        self.probe = probe
        self.on_rejected = on_rejected
        self.on_state = on_state
        self.wake = threading.Event()
        self.kafka_up = True
        self._next_probe = 0.0
        config = dict(producer_config)
        config["error_cb"] = self._on_error  # type: ignore[assignment]
        self.producer = Producer(config)
        self._cursor = 0  # highest seq handed to the producer
        self._sent: deque[int] = deque()  # seqs handed over, in order
        self._done: set[int] = set()
        self._records: dict[int, Record] = {}  # in flight, for dead-lettering on rejection
        self._watermark = 0  # every seq <= this is delivered
        self._deleted_through = 0
        self._last_delete = time.monotonic()
        self._delivered_window = (time.monotonic(), 0)
        self.delivered = 0
        self._forwarded: Counter[str] = Counter()

    # -- callbacks (run inside producer.poll on this thread) ---------------------------------
    def _on_error(self, error: KafkaError) -> None:
        self.metrics.delivery_errors.labels(error.name()).inc()
        if error.code() in OUTAGE_CODES and self.kafka_up:
            log.warning("Kafka unavailable (%s); spooling until it is back", error.str())
            self._set_up(False)

    def _on_delivery(self, seq: int, error: KafkaError | None, message: Message) -> None:
        record = self._records.pop(seq, None)
        if error is None:
            self._forwarded[message.topic() or ""] += 1  # to the metric once per step
            self.delivered += 1
            if not self.kafka_up:
                self._set_up(True)
        else:
            self.metrics.delivery_errors.labels(error.name()).inc()
            if record is not None:
                self.on_rejected(record, error)
        self._done.add(seq)

    def _set_up(self, up: bool) -> None:
        self.kafka_up = up
        self.metrics.kafka_up.set(1 if up else 0)
        if up:
            self.probe.reset()
            log.info("Kafka reachable again; replaying the spool")
        else:
            self._next_probe = time.monotonic() + self.probe.next_delay()
        self.on_state(up)

    # -- the loop ------------------------------------------------------------------------------
    def step(self) -> int:
        """Hand over what fits, serve callbacks, advance the watermark; returns rows sent."""
        sent = 0
        if self.kafka_up and len(self._sent) < self.inflight_max:
            sent = self._send_batch(min(READ_BATCH, self.inflight_max - len(self._sent)))
        elif not self.kafka_up and time.monotonic() >= self._next_probe:
            self._probe()
        self.producer.poll(0 if sent else 0.01)
        self._advance()
        return sent

    def _send_batch(self, limit: int) -> int:
        records = self.spool.read_after(self._cursor, limit)
        for record in records:
            self._produce(record)
            self._cursor = record.seq
        return len(records)

    def _produce(self, record: Record) -> None:
        while True:
            try:
                self.producer.produce(
                    record.topic, value=record.value, key=record.key,
                    headers=record.headers,  # type: ignore[arg-type]  # list is invariant
                    on_delivery=partial(self._on_delivery, record.seq),
                )  # fmt: skip
                break
            except BufferError:
                self.producer.poll(0.05)  # librdkafka's queue is full: let it drain
        self._sent.append(record.seq)
        self._records[record.seq] = record

    def _probe(self) -> None:
        try:
            self.producer.list_topics(timeout=2.0)
        except KafkaException:
            self._next_probe = time.monotonic() + self.probe.next_delay()
            return
        self._set_up(True)

    def _advance(self) -> None:
        for topic, count in self._forwarded.items():
            self.metrics.forwarded.labels(topic).inc(count)
        self._forwarded.clear()
        sent, done = self._sent, self._done
        while sent and sent[0] in done:
            seq = sent.popleft()
            done.discard(seq)
            self._watermark = seq
        now = time.monotonic()
        behind = self._watermark - self._deleted_through
        if behind and (behind >= DELETE_EVERY_ROWS or now - self._last_delete >= DELETE_EVERY_S):
            self.spool.delete_through(self._watermark)
            self._deleted_through = self._watermark
            self._last_delete = now
        self.metrics.inflight.set(len(sent))
        started, count = self._delivered_window
        if now - started >= 1.0:
            rate = (self.delivered - count) / (now - started)
            self.metrics.replay_rate.set(rate if self.spool.rows > len(sent) else 0.0)
            self._delivered_window = (now, self.delivered)

    @property
    def inflight(self) -> int:
        return len(self._sent)

    def drain(self, timeout_s: float) -> bool:
        """Deliver what was handed over (no new rows), within ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while self._sent and time.monotonic() < deadline:
            self.producer.poll(0.05)
            self._advance()
        if self._watermark > self._deleted_through:
            self.spool.delete_through(self._watermark)
            self._deleted_through = self._watermark
        return not self._sent

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            if not self.step() and self.kafka_up and not self._sent:
                self.wake.wait(0.05)
                self.wake.clear()

    def flush_all(self, timeout_s: float) -> bool:
        """Send the whole spool and wait for it (used by ``spool drain``)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.step()
            if not self._sent and self.spool.rows == 0:
                return True
        return False
