"""Kafka ``edge.models`` → retained MQTT ``{prefix}/models/{name}`` (the bridge never loads them).

At least once: the offset is stored only after the broker acknowledged the retained
publish. The agent verifies every bundle's signature itself.
"""

from __future__ import annotations

import logging
import re
import threading

from confluent_kafka import Consumer, KafkaException

from bridge.metrics import BridgeMetrics
from bridge.settings import BridgeSettings
from plumbing.events import Topics
from plumbing.kafka import consumer_config
from plumbing.mqtt import MqttConnection, MqttError

log = logging.getLogger(__name__)
MODEL_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class ModelDelivery:
    def __init__(
        self, settings: BridgeSettings, connection: MqttConnection, metrics: BridgeMetrics
    ) -> None:
        self.settings = settings.models
        self.connection = connection
        self.metrics = metrics
        self.topics = Topics(settings.mqtt.topic_prefix)
        group = self.settings.group_id or f"edgewatch-bridge-{settings.node_id}"
        self.consumer = Consumer(
            consumer_config(
                settings.kafka, group, f"edgewatch-bridge-models-{settings.node_id}",
                **{"fetch.message.max.bytes": self.settings.max_bundle_bytes + 1024},
            )
        )  # fmt: skip

    def run(self, stop: threading.Event) -> None:
        self.consumer.subscribe([self.settings.kafka_topic])
        try:
            while not stop.is_set():
                message = self.consumer.poll(0.5)
                if message is None:
                    continue
                if message.error() is not None:
                    log.warning("model topic: %s", message.error())
                    continue
                if self._deliver(message.key(), message.value(), stop):
                    self.consumer.store_offsets(message)
        except KafkaException as exc:
            log.error("model delivery stopped: %s", exc)
        finally:
            self.consumer.close()

    def _deliver(self, key: bytes | None, value: bytes | None, stop: threading.Event) -> bool:
        name = (key or b"").decode("utf-8", "replace")
        if not MODEL_NAME.match(name):
            self.metrics.models_skipped.labels("bad_name").inc()
            return True
        if value is not None and len(value) > self.settings.max_bundle_bytes:
            self.metrics.models_skipped.labels("too_large").inc()
            return True
        while not stop.is_set():
            try:
                # A tombstone (no value) clears the retained bundle.
                self.connection.publish_and_wait(self.topics.model(name), value or b"",
                                                 retain=True, timeout_s=10)  # fmt: skip
                self.metrics.models_delivered.inc()
                log.info("model %s republished to MQTT (%d bytes)", name, len(value or b""))
                return True
            except MqttError as exc:
                log.warning("model %s not yet republished: %s", name, exc)
                stop.wait(2.0)
        return False
