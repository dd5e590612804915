"""Routed messages → Kafka: straight while Kafka keeps up, through the spool when it does not.

One thread, the pump, runs everything after paho's network thread: spool writes, every
``producer.produce`` and ``producer.poll`` (so every delivery callback) and the MQTT acks.
No locks guard the bookkeeping, and records reach the one idempotent producer in the order
MQTT delivered them, which is what keeps per-key (per-device) order.

The state machine (``path``)::

              Kafka down, or the oldest record in flight waited > max_wait_s
          ┌──────────────────────────────────────────────────────────────────┐
          │                                                                  v
       DIRECT                                                              SPOOL
          ^                                                                  │
          └──────────────────────────────────────────────────────────────────┘
              Kafka up, every spool row handed over, no direct record left, and
              nothing in flight or the last deliveries took < resume_wait_s

DIRECT: a message is produced as soon as it is routed (and there is room in flight) and
stays unacknowledged on MQTT until Kafka acknowledged it (acks=all); only then is it acked.
Until then the broker's session holds it: after kill -9 it is delivered again. Nothing is
written locally.

SPOOL: a group of messages is committed to the spool (one fsync) and acked on MQTT then;
rows are produced in sequence order and deleted up to the delivered watermark. While Kafka
is down nothing is produced; the outage is probed with jittered backoff.

DIRECT → SPOOL: the direct records still in flight are written to the spool first, in
order, in one transaction ("rescued"), and acked: the broker's window (Receive Maximum)
frees up, so an outage fills the spool, not the broker. They are not produced again (the
cursor moves past them); their rows go once Kafka delivers the copies already handed over.
A message is spooled only after every earlier one is spooled or delivered: while rescued
records cannot all be stored (spool full under ``pause``), new messages wait.

SPOOL → DIRECT: only once every spool row has been handed to the producer, so rows still in
flight precede every direct record in the producer's queue; librdkafka keeps that order per
partition through retries (idempotence, unbounded ``message.timeout.ms``).

Stop: what is in flight is delivered (within the drain timeout), then every message taken
in but not yet acked is spooled and acked, as at a switch; what is still queued stays
unacked (the broker keeps it). Restart: the spool is replayed first (the pump starts on
SPOOL when it holds rows); what the broker redelivers came later and is spooled behind it.
Duplicates are possible (at least once, by event id); reordering of first deliveries per
key is not.

Durable when: a direct record, once Kafka acked it (then it is acked on MQTT); a spooled
or rescued record, once its transaction committed (then it is acked on MQTT). Before
that, the MQTT session holds the message.

Rejections: a record Kafka refuses for good is replaced by its dead-letter record, produced
at once; the original stays in flight (its row kept, its MQTT ack withheld) until the
dead-letter record is delivered.

Bounds: records in flight (direct and spooled alike) ≤ ``inflight_max`` and ≤
``inflight_max_bytes`` (key + value + ROW_OVERHEAD each; one record may exceed the bytes
while nothing else is in flight, so any message can go); records waiting for room in the
spool or in flight ≤ one intake group (the service takes no more meanwhile, and bounds its
intake queue itself). The broker's window (mqtt.receive_maximum) bounds nothing here:
Mosquitto 2.0 sends a session's whole backlog once the first PUBACK arrives (measured:
30,000 of 30,000 received with 500 acked, 1,000 with none). Each record in flight is held
twice, by Python and by librdkafka, so these bounds set the bridge's memory. Overflow
policy: wait (the pump serves deliveries meanwhile; an MQTT message stays unacked until it
is placed); every time records wait for room in flight it is counted
(``edgewatch_bridge_inflight_full_total``), and so is every produce librdkafka refused for
a full queue (delivery errors, code ``_QUEUE_FULL``).
"""

from __future__ import annotations

import logging
import random
import time
from collections import Counter, deque
from collections.abc import Callable
from enum import Enum
from functools import partial

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from bridge.metrics import BridgeMetrics
from bridge.spool import Record, Spool, SpoolFullError
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
IDLE_POLL_S = 0.002  # longest wait for delivery reports while records are in flight
FULL_RETRY_S = 0.2  # wait before trying a full spool again

Ack = Callable[[list[tuple[int, int]]], None]


class Path(Enum):
    DIRECT = "direct"
    SPOOL = "spool"


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
        inflight_max_bytes: int = 4 << 20,
        probe: Backoff,
        on_rejected: Callable[[Record, KafkaError], Record | None],
        ack: Ack = lambda tokens: None,
        on_state: Callable[[bool], None] = lambda up: None,
        direct: bool = False,
        max_wait_s: float = 1.0,
        resume_wait_s: float = 0.25,
    ) -> None:
        self.spool = spool
        self.metrics = metrics
        self.inflight_max = inflight_max
        self.inflight_max_bytes = inflight_max_bytes
        self.probe = probe
        self.on_rejected = on_rejected
        self.ack = ack
        self.on_state = on_state
        self.direct_enabled = direct
        self.max_wait_s = max_wait_s
        self.resume_wait_s = resume_wait_s
        self.kafka_up = True
        self._next_probe = 0.0
        config = dict(producer_config)
        config["error_cb"] = self._on_error  # type: ignore[assignment]
        self.producer = Producer(config)
        self.path = Path.SPOOL
        self.metrics.direct.set(0)
        self._flight: deque[Record] = deque()  # handed to the producer, in produce order
        self._flight_bytes = 0  # their sizes (Record.size), until they leave the deque
        self._direct = 0  # records in flight whose MQTT ack waits for Kafka
        self._cursor = 0  # every spool row with seq <= this was handed over
        self._waiting: list[Record] = []  # taken in, not yet spooled or handed over
        self._acks: list[tuple[int, int]] = []
        self._replacements: list[Record] = []  # dead-letter records to produce
        self._watermark = self._deleted_through = self._cursor  # rows <= it are delivered
        self._last_delete = time.monotonic()
        self._delivered_window = (time.monotonic(), 0)
        self.delivered = 0
        self._forwarded: Counter[str] = Counter()
        self._rescue_at = 0.0  # when to retry spooling direct records that did not fit
        self._step_latency = 0.0  # slowest delivery (handed → acked) in this step
        self._latency = 0.0  # that of the last step with deliveries

    # -- callbacks (run inside producer.poll on the pump thread) -----------------------------
    def _on_error(self, error: KafkaError) -> None:
        self.metrics.delivery_errors.labels(error.name()).inc()
        if error.code() in OUTAGE_CODES and self.kafka_up:
            log.warning("Kafka unavailable (%s); spooling until it is back", error.str())
            self._set_up(False)

    def _on_delivery(self, record: Record, error: KafkaError | None, message: Message) -> None:
        if error is None:
            latency = time.monotonic() - record.handed
            self._step_latency = max(self._step_latency, latency)
            self._forwarded[message.topic() or ""] += 1  # to the metric once per step
            self.delivered += 1
            if not self.kafka_up:
                self._set_up(True)
            self._finish(record)
            return
        self.metrics.delivery_errors.labels(error.name()).inc()
        replacement = self.on_rejected(record, error)
        if replacement is None:
            self._finish(record)  # dropped for good (counted by on_rejected)
        else:
            replacement.origin = record
            self._replacements.append(replacement)

    def _finish(self, record: Record) -> None:
        record.done = True
        if record.ack is not None:
            self._acks.append(record.ack)
            record.ack = None
            self._direct -= 1
        if record.origin is not None:
            self._finish(record.origin)

    def _set_up(self, up: bool) -> None:
        self.kafka_up = up
        self.metrics.kafka_up.set(1 if up else 0)
        if up:
            self.probe.reset()
            log.info("Kafka reachable again; replaying the spool")
        else:
            self._next_probe = time.monotonic() + self.probe.next_delay()
        self.on_state(up)

    # -- the pump ------------------------------------------------------------------------------
    @property
    def waiting(self) -> bool:
        """Records taken in wait for room: take no more until they are placed."""
        return bool(self._waiting)

    @property
    def inflight(self) -> int:
        return len(self._flight)

    def intake_wait_s(self) -> float:
        """How long the service may block for new messages before the next step."""
        if self._flight or self._waiting or (self.kafka_up and self._unhanded()):
            return 0.0  # deliveries to serve or rows to send: step() waits in poll instead
        return 0.05

    def step(self, records: list[Record]) -> int:
        """Place new ``records`` (DIRECT or SPOOL), send spool rows, serve callbacks, ack."""
        now = time.monotonic()
        self._choose_path(now)
        retry = self._direct and self.path is Path.SPOOL and now >= self._rescue_at
        if retry and not self._rescue():  # what did not fit at the switch: again later
            self._rescue_at = now + FULL_RETRY_S
        if records:
            self._waiting.extend(records)
        placed = self._place(now) if self._waiting else 0
        sent = 0
        if self.kafka_up:
            budget = self.inflight_max - len(self._flight)
            if self._unhanded():
                if budget > 0:
                    sent = self._send_spooled(min(READ_BATCH, budget), now)
                else:
                    self.metrics.inflight_full.inc()
        elif time.monotonic() >= self._next_probe:
            self._probe()
        if placed or sent:
            self.producer.poll(0)
        elif self._waiting:
            self.producer.poll(FULL_RETRY_S)  # the spool is full: wait, serving deliveries
        else:
            self.producer.poll(IDLE_POLL_S if self._flight else 0)
        while self._replacements:
            replacements, self._replacements = self._replacements, []
            for record in replacements:
                self._produce(record, time.monotonic())
            self.producer.poll(0)
        self._advance()
        return placed + sent

    def _unhanded(self) -> bool:
        return self._cursor < self.spool.last_seq

    def _choose_path(self, now: float) -> None:
        flight = self._flight
        waited = now - flight[0].handed if flight else 0.0
        if self.path is Path.DIRECT:
            if not self.kafka_up or waited > self.max_wait_s:
                why = "down" if not self.kafka_up else f"slow ({waited:.2f} s)"
                log.info("Kafka %s: messages go through the spool", why)
                self._switch(Path.SPOOL)
                self._rescue()
        elif (
            self.direct_enabled
            and self.kafka_up
            and not self._direct
            and not self._unhanded()
            and (not flight or (self._latency < self.resume_wait_s and waited < self.max_wait_s))
        ):
            self._switch(Path.DIRECT)

    def _switch(self, path: Path) -> None:
        self.path = path
        self.metrics.direct.set(1 if path is Path.DIRECT else 0)
        self.metrics.path_switches.labels(path.value).inc()

    def _rescue(self) -> bool:
        """Spool the direct records still in flight (in order) and ack them; True when none
        is left. They stay in flight: their rows go when Kafka delivers them."""
        if not self._direct:
            return True
        pending = [r for r in self._flight if r.ack is not None]
        # Invariant: with direct records in flight every spool row was handed over, so the
        # rescued rows directly follow the cursor and the cursor may skip them.
        assert not self._unhanded(), "direct records in flight while spool rows wait"
        stored = self._append(pending)
        for record in pending[:stored]:
            assert record.ack is not None
            self._acks.append(record.ack)
            record.ack = None
        if stored:
            self._direct -= stored
            self._cursor = pending[stored - 1].seq
            self.metrics.rescued.inc(stored)
        return not self._direct

    def _place(self, now: float) -> int:
        """Hand the waiting records over (DIRECT) or spool what fits and ack it (SPOOL)."""
        waiting = self._waiting
        if self.path is Path.DIRECT:
            placed = 0
            for record in waiting:
                if not self._room(record.size):
                    self.metrics.inflight_full.inc()
                    break  # the rest waits (unacked) until deliveries make room
                self._produce(record, now)
                if record.ack is not None:
                    self._direct += 1
                placed += 1
            self._waiting = waiting[placed:]
            return placed
        if not self._rescue():
            return 0  # earlier messages first
        stored = self._append(waiting)
        for record in waiting[:stored]:
            if record.ack is not None:
                self._acks.append(record.ack)
                record.ack = None
        self._waiting = waiting[stored:]
        return stored

    def _append(self, records: list[Record]) -> int:
        try:
            stored = self.spool.append(records)
        except SpoolFullError as exc:
            self.metrics.spool_full.inc()
            log.warning("spool full, intake paused: %s", exc)
            return 0
        self.metrics.group_size.observe(stored)
        return stored

    def _room(self, size: int) -> bool:
        """One more record of ``size`` bytes fits in flight (any fits while none is)."""
        flight = self._flight
        return not flight or (
            len(flight) < self.inflight_max and self._flight_bytes + size <= self.inflight_max_bytes
        )

    def _send_spooled(self, limit: int, now: float) -> int:
        """Hand over up to ``limit`` rows after the cursor, as many as the byte bound lets."""
        room = self.inflight_max_bytes - self._flight_bytes
        if self._flight and room <= 0:
            self.metrics.inflight_full.inc()
            return 0
        row = max(1, self.spool.bytes // max(1, self.spool.rows))  # the average row
        records = self.spool.read_after(self._cursor, max(1, min(limit, room // row)))
        if not records:
            # None after the cursor (the rows there were dropped): only this thread
            # appends, so nothing is unhanded.
            self._cursor = self.spool.last_seq
        sent = 0
        for record in records:
            if not self._room(record.size):
                self.metrics.inflight_full.inc()
                break  # the rest is read again (from SQLite) once deliveries made room
            self._produce(record, now)
            self._cursor = record.seq
            sent += 1
        return sent

    def _produce(self, record: Record, now: float) -> None:
        record.handed = now
        while True:
            try:
                self.producer.produce(
                    record.topic, value=record.value, key=record.key,
                    headers=record.headers,  # type: ignore[arg-type]  # list is invariant
                    on_delivery=partial(self._on_delivery, record),
                )  # fmt: skip
                break
            except BufferError:  # librdkafka's queue is full: let it drain
                self.metrics.delivery_errors.labels("_QUEUE_FULL").inc()
                self.producer.poll(0.05)
        self._flight.append(record)
        self._flight_bytes += record.size

    def _probe(self) -> None:
        try:
            self.producer.list_topics(timeout=0.5)  # the pump waits meanwhile
        except KafkaException:
            self._next_probe = time.monotonic() + self.probe.next_delay()
            return
        self._set_up(True)

    def _advance(self) -> None:
        if self._step_latency:
            self._latency, self._step_latency = self._step_latency, 0.0
        if self._acks:
            acks, self._acks = self._acks, []
            self.ack(acks)
        for topic, count in self._forwarded.items():
            self.metrics.forwarded.labels(topic).inc(count)
        self._forwarded.clear()
        flight = self._flight
        while flight and flight[0].done:
            record = flight.popleft()
            self._flight_bytes -= record.size
            if record.seq:
                self._watermark = record.seq
        now = time.monotonic()
        behind = self._watermark - self._deleted_through
        if behind and (behind >= DELETE_EVERY_ROWS or now - self._last_delete >= DELETE_EVERY_S):
            self.spool.delete_through(self._watermark)
            self._deleted_through = self._watermark
            self._last_delete = now
        self.metrics.inflight.set(len(flight))
        started, count = self._delivered_window
        if now - started >= 1.0:
            rate = (self.delivered - count) / (now - started)
            self.metrics.replay_rate.set(rate if self.spool.rows > len(flight) else 0.0)
            self._delivered_window = (now, self.delivered)

    def start_path(self) -> None:
        """DIRECT at start when allowed and the spool is empty; else replay it first."""
        if self.direct_enabled and not self.spool.rows:
            self._cursor = self._watermark = self._deleted_through = self.spool.last_seq
            self._switch(Path.DIRECT)

    @property
    def unacked(self) -> int:
        """Messages taken in whose MQTT ack waits (direct in flight, or for spool room)."""
        return self._direct + len(self._waiting)

    def finish(self, timeout_s: float) -> None:
        """At stop: deliver what is in flight (within ``timeout_s``, while Kafka is up), then
        spool what is still unacknowledged (direct records, records taken in) and ack it."""
        if self.kafka_up:
            self.drain(timeout_s)
        if self.path is Path.DIRECT:
            self._switch(Path.SPOOL)
        if self._rescue() and self._waiting:
            self._place(time.monotonic())
        self._advance()

    def drain(self, timeout_s: float) -> bool:
        """Deliver what was handed over (nothing new), within ``timeout_s``; ack it."""
        deadline = time.monotonic() + timeout_s
        while self._flight and time.monotonic() < deadline:
            self.producer.poll(0.05)
            while self._replacements:
                replacements, self._replacements = self._replacements, []
                for record in replacements:
                    self._produce(record, time.monotonic())
            self._advance()
        if self._watermark > self._deleted_through:
            self.spool.delete_through(self._watermark)
            self._deleted_through = self._watermark
        return not self._flight

    def flush_all(self, timeout_s: float) -> bool:
        """Send the whole spool and wait for it (used by ``spool drain``)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.step([])
            if not self._flight and self.spool.rows == 0:
                return True
        return False
