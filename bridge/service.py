"""The bridge service: MQTT (manual acks) → spool (group commit) → Kafka; models back.

Threads: paho's network thread enqueues; the appender routes, commits groups to the spool
and then acks them on MQTT; the forwarder sends the spool to Kafka in order; the model
delivery consumes the models topic. One stop event ends them all.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter
from dataclasses import replace
from typing import Any

import paho.mqtt.client as paho
from confluent_kafka import KafkaError

from bridge.delivery import ModelDelivery
from bridge.forwarder import Backoff, Forwarder
from bridge.metrics import BridgeMetrics
from bridge.routing import TOO_LARGE_FOR_KAFKA, Routed, Router
from bridge.settings import BridgeSettings
from bridge.spool import Record, Spool, SpoolFullError
from plumbing.events import Topics, deadletter_document, dumps
from plumbing.kafka import producer_config
from plumbing.lifecycle import sd_notify
from plumbing.metrics import serve_metrics
from plumbing.mqtt import MqttConnection

log = logging.getLogger(__name__)
SERVICE = "bridge"


class BridgeService:
    def __init__(self, settings: BridgeSettings) -> None:
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
        self.queue: queue.Queue[Any] = queue.Queue(maxsize=settings.queue_capacity)
        self.status_topic = self.topics.status(settings.node_id, SERVICE)
        self.connection = MqttConnection(
            settings.mqtt,
            settings.mqtt_client_id,
            subscriptions=[(f, 1) for f in self.router.subscriptions()],
            on_message=self._on_message,
            manual_ack=True,
            will=(self.status_topic, self._status("offline")),
        )
        self.connection.add_connect_listener(self._on_connect)
        kafka_config = producer_config(
            settings.kafka, f"edgewatch-bridge-{settings.node_id}",
            **{"message.timeout.ms": 0, "message.max.bytes": settings.max_message_bytes + 65536},
        )  # fmt: skip
        self.forwarder = Forwarder(
            self.spool, kafka_config, self.metrics,
            inflight_max=settings.inflight_max,
            probe=Backoff(settings.probe_min_s, settings.probe_max_s),
            on_rejected=self._on_rejected,
            on_state=lambda _up: self._publish_status(),
        )  # fmt: skip
        self.delivery = (
            ModelDelivery(settings, self.connection, self.metrics)
            if settings.models.enabled
            else None
        )
        self._threads = [
            threading.Thread(target=self._append_loop, name="bridge-appender", daemon=True),
            threading.Thread(target=self._forward_loop, name="bridge-forwarder", daemon=True),
            threading.Thread(target=self._housekeeping, name="bridge-housekeeping", daemon=True),
        ]
        self._appender_done = threading.Event()

    # -- paho network thread ---------------------------------------------------------------------
    def _on_message(self, msg: paho.MQTTMessage) -> None:
        if not self._intake_open.is_set():
            return  # stopping: unacked, so the broker keeps it for our next session
        if msg.dup:
            self.metrics.redelivered.inc()
        item = (msg.topic, bytes(msg.payload), (msg.mid, self.connection.generation))
        try:
            self.queue.put_nowait(item)
        except queue.Full:
            self.queue.put(item)  # flow control makes this unreachable; wait, never drop

    def _on_connect(self) -> None:
        self.metrics.mqtt_up.set(1)
        self._publish_status()

    # -- appender ----------------------------------------------------------------------------------
    def _take_group(self) -> list[tuple[str, bytes, Any]]:
        s = self.settings.spool
        try:
            group = [self.queue.get(timeout=0.1)]
        except queue.Empty:
            return []
        deadline = time.monotonic() + s.group_commit_wait_ms / 1000
        while len(group) < s.group_commit_max:
            try:
                group.append(self.queue.get_nowait())
            except queue.Empty:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    group.append(self.queue.get(timeout=remaining))
                except queue.Empty:
                    break
        return group

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

    def _append_loop(self) -> None:
        while True:
            group = self._take_group()
            if not group:
                if not self._intake_open.is_set() and self.queue.empty():
                    break
                continue
            records = [self._record(topic, payload) for topic, payload, _ in group]
            for kind, n in Counter(r.kind for r in records).items():
                self.metrics.received.labels(kind).inc(n)
            tokens = [token for _, _, token in group]
            while records:
                stored = self._commit(records)
                for token in tokens[:stored]:
                    self.connection.ack(*token)
                records, tokens = records[stored:], tokens[stored:]
                if stored:
                    self.forwarder.wake.set()
                elif not self._intake_open.is_set() or self.stop_event.wait(0.2):
                    self._appender_done.set()
                    return  # stopping while full: unacked, the broker redelivers
        self._appender_done.set()

    def _commit(self, records: list[Record]) -> int:
        """Spool what fits; 0 means full (acks are withheld, so intake pauses)."""
        try:
            stored = self.spool.append(records)
        except SpoolFullError as exc:
            self.metrics.spool_full.inc()
            log.warning("spool full, intake paused: %s", exc)
            return 0
        self.metrics.group_size.observe(stored)
        return stored

    # -- forwarder ---------------------------------------------------------------------------------
    def _forward_loop(self) -> None:
        self.forwarder.run(self.stop_event)

    def _on_rejected(self, record: Record, error: KafkaError) -> None:
        """Kafka refused a message for good: park it on the dead-letter topic."""
        if record.topic == self.settings.deadletter_topic:
            log.error("dead-letter record refused by Kafka too (%s); dropped", error.str())
            self.metrics.spool_dropped.labels(record.kind, "kafka_rejected").inc()
            return
        mqtt_topic = dict(record.headers).get("mqtt_topic", b"").decode()
        event_id = dict(record.headers).get("event_id", b"").decode()
        routed = Routed(record.kind, record.topic, record.key or b"", record.headers, event_id,
                        f"kafka_{error.name().lower()}", error.str())  # fmt: skip
        self.spool.append([self._deadletter(routed, mqtt_topic, record.value)])

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
            self.metrics.unacked.set(self.queue.qsize())
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
        """Stop intake, commit what was taken in, deliver what Kafka has, go offline."""
        sd_notify("STOPPING=1")
        self._intake_open.clear()
        self._appender_done.wait(drain_timeout_s)
        self.stop_event.set()
        for thread in self._threads:
            thread.join(timeout=drain_timeout_s)
        self.forwarder.drain(timeout_s=drain_timeout_s)
        self.connection.publish_last_status(self.status_topic, self._status("offline"))
        self.connection.stop()
        self.spool.close()
