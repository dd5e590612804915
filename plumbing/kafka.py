"""Kafka client configuration that every edgewatch producer and consumer starts from."""

from __future__ import annotations

import logging

from plumbing.settings import KafkaSettings, LibrdkafkaValue

log = logging.getLogger(__name__)

# A delivery is final only when every in-sync replica has it, written exactly once.
DURABLE_PRODUCER: dict[str, LibrdkafkaValue] = {
    "acks": "all",
    "enable.idempotence": True,
    "max.in.flight.requests.per.connection": 5,
    "compression.type": "lz4",
    "linger.ms": 20,
    "batch.size": 512 * 1024,
    "queue.buffering.max.kbytes": 64 * 1024,
    "queue.buffering.max.messages": 200_000,
}


def producer_config(
    settings: KafkaSettings, client_id: str, **overrides: LibrdkafkaValue
) -> dict[str, LibrdkafkaValue]:
    """Connection settings + durable producer defaults + the caller's overrides.

    The user's passthrough ``extra`` options win over our defaults; call-site overrides
    (what a component needs to be correct) win over both.
    """
    config: dict[str, LibrdkafkaValue] = {"client.id": client_id, **DURABLE_PRODUCER}
    config.update(settings.librdkafka_config())
    config.update(overrides)
    return config


def consumer_config(
    settings: KafkaSettings, group_id: str, client_id: str, **overrides: LibrdkafkaValue
) -> dict[str, LibrdkafkaValue]:
    """At-least-once consumer: offsets are stored by the application after processing."""
    config: dict[str, LibrdkafkaValue] = {
        "client.id": client_id,
        "group.id": group_id,
        "enable.auto.commit": True,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
    }
    config.update(settings.librdkafka_config())
    config.update(overrides)
    return config
