"""Publishing to the fleet: one durable record on the compacted ``edge.models``.

Bundles (key = model name) and signed serve instructions (key = ``{model}--serve``) both go
through ``produce_durably``, with the central Kafka settings (SASL/SSL included), so what
the retrainer, ``publish``, ``stage`` and ``serve-version`` send is acknowledged by every
in-sync replica or reported as an error.
"""

from __future__ import annotations

from pathlib import Path

from confluent_kafka import KafkaError, Message, Producer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from models.bundle import load_bundle
from plumbing.errors import EdgewatchError
from plumbing.kafka import producer_config
from plumbing.settings import KafkaSettings

MAX_RECORD_BYTES = 16 * 1024 * 1024  # a bundle is one record; edge.models allows 16 MiB


def produce_durably(
    settings: KafkaSettings,
    topic: str,
    key: str,
    value: bytes,
    headers: dict[str, bytes] | None = None,
) -> None:
    """One record, acknowledged by every in-sync replica, or an ``EdgewatchError``."""
    producer = Producer(
        producer_config(
            settings, "edgewatch-models-publish", **{"message.max.bytes": MAX_RECORD_BYTES}
        )
    )
    record_headers: dict[str, str | bytes | None] = dict(headers or {})
    errors: list[KafkaError] = []

    def on_delivery(err: KafkaError | None, _msg: Message) -> None:
        if err is not None:
            errors.append(err)

    producer.produce(topic, key=key.encode(), value=value, headers=record_headers,
                     on_delivery=on_delivery)  # fmt: skip
    if producer.flush(30) != 0 or errors:
        raise EdgewatchError(f"publishing to {topic} failed: {errors or 'timeout'}")


def publish_bundle(
    path: Path, kafka: KafkaSettings, topic: str, trusted: dict[str, Ed25519PublicKey]
) -> None:
    """Verify locally first (never ship what the edge would reject), then produce durably."""
    bundle = load_bundle(path, trusted)
    headers = {
        "model_version": str(bundle.manifest.version).encode(),
        "bundle_sha256": bundle.sha256.encode(),
    }
    try:
        produce_durably(kafka, topic, bundle.manifest.name, path.read_bytes(), headers)
    except EdgewatchError as exc:
        raise EdgewatchError(f"publishing {path}: {exc}") from exc
