"""The bridge service: MQTT (manual acks) → Kafka, direct or through the spool; models back.

Threads: paho's network thread decodes QoS 1 PUBLISH packets in bulk (plumbing.paho_io) and
enqueues one batch per read; the pump routes them and runs bridge.forwarder (the direct
path, the spool, every produce, delivery callback and MQTT ack, in receive order); the
housekeeping thread expires spool rows and sets gauges; the model delivery consumes the
models topic. One stop event ends them all.

Intake bound: the intake queue holds at most ``queue_capacity`` messages and
``queue_max_bytes`` payload bytes (a batch is always let into an empty queue). When a batch
does not fit, paho's network thread waits until the pump took enough (counted:
``edgewatch_bridge_intake_full_total``); meanwhile it reads nothing, so TCP flow control
holds the broker back. The bridge cannot leave this to the broker: Mosquitto 2.0 sends a
persistent session's whole backlog once the first PUBACK arrives, whatever
``mqtt.receive_maximum`` says (see bridge.forwarder), and a 50k backlog then came into
the process at once: peak RSS up to 99 MB on the direct path, 103 MB through the spool.
"""

from __future__ import annotations

import ctypes
import logging
import queue
import threading
import time
from collections import Counter
from dataclasses import replace

import paho.mqtt.client as paho
from confluent_kafka import KafkaError

from bridge.delivery import ModelDelivery
from bridge.forwarder import Backoff, Forwarder, Path
from bridge.metrics import BridgeMetrics
from bridge.routing import TOO_LARGE_FOR_KAFKA, Routed, Router
from bridge.settings import BridgeSettings
from bridge.spool import Record, Spool
from plumbing.events import Topics, deadletter_document, dumps
from plumbing.kafka import producer_config
from plumbing.lifecycle import sd_notify
from plumbing.metrics import serve_metrics
from plumbing.mqtt import MqttConnection
from plumbing.paho_io import BufferedClient, Publish

log = logging.getLogger(__name__)
SERVICE = "bridge"
M_ARENA_MAX = -8  # glibc's mallopt parameter
MALLOC_ARENAS = 2


def limit_malloc_arenas(count: int) -> bool:
    """Let at most ``count`` glibc malloc arenas serve this process's threads.

    glibc gives threads that allocate at the same time arenas of their own; the payloads
    paho's thread allocates and the pump frees, and librdkafka's threads, then keep freed
    memory in several arenas. Measured forwarding a 50k backlog: peak RSS 79-83 MB with
    the default, 73-75 MB with two. Call before any thread starts; False where the C
    library has no such knob (it then changes nothing).
    """
    try:
        return bool(ctypes.CDLL(None).mallopt(M_ARENA_MAX, count))
    except (OSError, AttributeError):
        return False


class BridgeService:
    def __init__(self, settings: BridgeSettings) -> None:
        limit_malloc_arenas(MALLOC_ARENAS)  # before librdkafka's and our threads
        self.settings = settings
        self.topics = Topics(settings.mqtt.topic_prefix)
        self.metrics = BridgeMetrics()
        self.router = Router(self.topics, settings.routes, settings.node_id)
        s = settings.spool
        self.spool = Spool(s.path, max_bytes=s.max_bytes, max_age_s=s.max_age_s,
                           policy=s.overflow, cache_kib=s.cache_kib)  # fmt: skip
        if self.spool.rows_at_open:
            log.info("spool holds %d rows from before; replaying them", self.spool.rows_at_open)
            self.metrics.resent_after_restart.inc(self.spool.rows_at_open)
        self.stop_event = threading.Event()
        self._intake_open = threading.Event()
        # (connection generation, publishes, their payload bytes) per read of the socket, in
        # arrival order; bounded by _admit (messages and bytes), not by the queue itself.
        self.queue: queue.Queue[tuple[int, list[Publish], int]] = queue.Queue()
        self._room = threading.Condition()
        self._queued = self._queued_bytes = 0  # in the queue (guarded by _room)
        self.status_topic = self.topics.status(settings.node_id, SERVICE)
        self.connection = MqttConnection(
            settings.mqtt,
            settings.mqtt_client_id,
            subscriptions=[(f, 1) for f in self.router.subscriptions()],
            on_message=self._on_message,
            manual_ack=True,
            will=(self.status_topic, self._status("offline")),
        )
        if isinstance(self.connection.client, BufferedClient):
            self.connection.client.on_publish_batch = self._on_publish_batch
        self.connection.add_connect_listener(self._on_connect)
        kafka_config = producer_config(
            settings.kafka, f"edgewatch-bridge-{settings.node_id}",
            **{"message.timeout.ms": 0, "message.max.bytes": settings.max_message_bytes + 65536,
               "linger.ms": settings.direct.linger_ms},
        )  # fmt: skip
        self.forwarder = Forwarder(
            self.spool, kafka_config, self.metrics,
            inflight_max=settings.inflight_max,
            inflight_max_bytes=settings.inflight_max_bytes,
            probe=Backoff(settings.probe_min_s, settings.probe_max_s),
            on_rejected=self._on_rejected,
            ack=self._ack,
            on_state=lambda _up: self._publish_status(),
            direct=settings.direct.enabled,
            max_wait_s=settings.direct.max_wait_s,
            resume_wait_s=settings.direct.resume_wait_s,
        )  # fmt: skip
        self.delivery = (
            ModelDelivery(settings, self.connection, self.metrics)
            if settings.models.enabled
            else None
        )
        self._threads = [
            threading.Thread(target=self._pump, name="bridge-pump", daemon=True),
            threading.Thread(target=self._housekeeping, name="bridge-housekeeping", daemon=True),
        ]
        self._pump_done = threading.Event()

    # -- paho network thread ---------------------------------------------------------------------
    def _on_publish_batch(self, batch: list[Publish]) -> None:
        self._enqueue(batch)

    def _on_message(self, msg: paho.MQTTMessage) -> None:
        """A message paho decoded itself (the bulk decoder left it, or paho's own client)."""
        self._enqueue([(msg.topic, bytes(msg.payload), msg.mid, bool(msg.dup))])

    def _enqueue(self, batch: list[Publish]) -> None:
        """Queue ``batch`` once it fits; dropped unacked (the broker keeps it for our next
        session) when intake closes meanwhile."""
        generation = self.connection.generation  # of the connection that delivered it
        size = sum([len(publish[1]) for publish in batch])
        if self._admit(len(batch), size):
            self.queue.put_nowait((generation, batch, size))

    def _admit(self, count: int, size: int) -> bool:
        """Wait until ``count`` messages of ``size`` bytes fit in the intake queue; take the
        room. False when intake is closed."""
        cap, cap_bytes = self.settings.queue_capacity, self.settings.queue_max_bytes
        with self._room:
            waited = False
            while self._queued and (
                self._queued + count > cap or self._queued_bytes + size > cap_bytes
            ):
                if not waited:
                    self.metrics.intake_full.inc()
                    waited = True
                if not self._intake_open.is_set():
                    return False
                self._room.wait(0.1)
            if not self._intake_open.is_set():
                return False
            self._queued += count
            self._queued_bytes += size
        return True

    def _release(self, count: int, size: int) -> None:
        """The pump took ``count`` messages of ``size`` bytes out of the intake queue."""
        with self._room:
            self._queued -= count
            self._queued_bytes -= size
            self._room.notify()

    def _on_connect(self) -> None:
        self.metrics.mqtt_up.set(1)
        self._publish_status()

    def _ack(self, tokens: list[tuple[int, int]]) -> None:
        """PUBACK delivered or spooled messages; those of an older connection are stale."""
        by_generation: dict[int, list[int]] = {}
        for mid, generation in tokens:
            by_generation.setdefault(generation, []).append(mid)
        for generation, mids in by_generation.items():
            self.connection.ack_many(mids, generation)

    # -- pump ------------------------------------------------------------------------------------
    def _take(self, wait_s: float, path: Path) -> list[Record]:
        """Routed records of what arrived: all that waits on the direct path; a group of up
        to ``group_commit_max``, waiting ``group_commit_wait_ms`` to fill it, for the spool."""
        s = self.settings.spool
        try:
            first = self.queue.get(timeout=wait_s) if wait_s else self.queue.get_nowait()
        except queue.Empty:
            return []
        items = [first]
        count, size = len(first[1]), first[2]
        deadline = time.monotonic() + s.group_commit_wait_ms / 1000
        while count < s.group_commit_max:
            try:
                item = self.queue.get_nowait()
            except queue.Empty:
                remaining = deadline - time.monotonic()
                if path is Path.DIRECT or remaining <= 0:
                    break
                try:
                    item = self.queue.get(timeout=remaining)
                except queue.Empty:
                    break
            items.append(item)
            count += len(item[1])
            size += item[2]
        self._release(count, size)
        records = []
        redelivered = 0
        for generation, batch, _size in items:
            for topic, payload, mid, dup in batch:
                record = self._record(topic, payload)
                record.ack = (mid, generation)
                records.append(record)
                redelivered += dup
        if redelivered:
            self.metrics.redelivered.inc(redelivered)
        for kind, n in Counter(r.kind for r in records).items():
            self.metrics.received.labels(kind).inc(n)
        return records

    def _record(self, topic: str, payload: bytes) -> Record:
        routed = self.router.route(topic, payload)
        limit = self.settings.max_message_bytes
        if routed.reject is None and len(payload) > limit:
            detail = f"{len(payload)} bytes, Kafka limit {limit}"
            routed = replace(routed, reject=TOO_LARGE_FOR_KAFKA, detail=detail)
        if routed.reject is not None:
            return self._deadletter(routed, topic, payload)
        return Record(routed.kind, routed.topic, routed.key, payload, routed.headers)

    def _deadletter(self, routed: Routed, topic: str, payload: bytes) -> Record:
        assert routed.reject is not None
        self.metrics.deadletters.labels(routed.reject).inc()
        entry = deadletter_document(
            event_id=routed.event_id, topic=topic, reason=routed.reject,
            detail=routed.detail, payload=payload, service=SERVICE,
        )  # fmt: skip
        headers = [*routed.headers, ("reason", routed.reject.encode())]
        return Record("deadletter", self.settings.deadletter_topic, routed.key, dumps(entry),
                      headers)  # fmt: skip

    def _pump(self) -> None:
        forwarder = self.forwarder
        forwarder.start_path()
        while self._intake_open.is_set():
            wait = forwarder.intake_wait_s()
            forwarder.step([] if forwarder.waiting else self._take(wait, forwarder.path))
        self._pump_done.set()

    def _on_rejected(self, record: Record, error: KafkaError) -> Record | None:
        """Kafka refused a message for good: its dead-letter record takes its place."""
        if record.topic == self.settings.deadletter_topic:
            log.error("dead-letter record refused by Kafka too (%s); dropped", error.str())
            self.metrics.spool_dropped.labels(record.kind, "kafka_rejected").inc()
            return None
        mqtt_topic = dict(record.headers).get("mqtt_topic", b"").decode()
        event_id = dict(record.headers).get("event_id", b"").decode()
        routed = Routed(record.kind, record.topic, record.key or b"", record.headers, event_id,
                        f"kafka_{error.name().lower()}", error.str())  # fmt: skip
        return self._deadletter(routed, mqtt_topic, record.value)

    def _housekeeping(self) -> None:
        dropped_seen: dict[tuple[str, str], int] = {}
        while not self.stop_event.wait(1.0):
            self.spool.expire()
            spool = self.spool
            for cause, counter in (("overflow", spool.dropped), ("age", spool.expired)):
                for kind, total in counter.items():
                    new = total - dropped_seen.get((kind, cause), 0)
                    if new:
                        self.metrics.spool_dropped.labels(kind, cause).inc(new)
                        dropped_seen[(kind, cause)] = total
            self.metrics.spool_rows.set(spool.rows)
            self.metrics.spool_bytes.set(spool.bytes)
            self.metrics.spool_oldest_age.set(spool.oldest_age_s())
            self.metrics.unacked.set(self.forwarder.unacked)
            self.metrics.mqtt_up.set(1 if self.connection.connected.is_set() else 0)

    # -- status and lifecycle ----------------------------------------------------------------------
    def _status(self, state: str) -> bytes:
        return dumps({"service": SERVICE, "node": self.settings.node_id, "state": state,
                      "at": time.time(),
                      "kafka": "up" if getattr(self, "forwarder", None) is None
                      or self.forwarder.kafka_up else "down"})  # fmt: skip

    def _publish_status(self) -> None:
        self.connection.publish(self.status_topic, self._status("online"), retain=True)

    def start(self) -> None:
        serve_metrics(self.metrics.registry, self.settings.metrics_host, self.settings.metrics_port)
        self.metrics.kafka_up.set(1)
        self._intake_open.set()
        for thread in self._threads:
            thread.start()
        self.connection.start()
        if self.delivery is not None:
            thread = threading.Thread(target=self.delivery.run, args=(self.stop_event,),
                                      name="bridge-models", daemon=True)  # fmt: skip
            thread.start()
            self._threads.append(thread)
        sd_notify("READY=1")

    def stop(self, drain_timeout_s: float = 10.0) -> None:
        """Stop intake (what is queued stays unacked: the broker delivers it again), deliver
        and ack what Kafka has, go offline."""
        sd_notify("STOPPING=1")
        self._intake_open.clear()
        self._pump_done.wait(drain_timeout_s)
        self.stop_event.set()
        for thread in self._threads:
            thread.join(timeout=drain_timeout_s)
        self.forwarder.finish(timeout_s=drain_timeout_s)
        self.connection.publish_last_status(self.status_topic, self._status("offline"))
        self.connection.stop()
        self.spool.close()
