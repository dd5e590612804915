"""Publishing a verified bundle to the fleet: one record on the compacted ``edge.models``."""

from __future__ import annotations

from pathlib import Path

from confluent_kafka import KafkaError, Message, Producer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from models.bundle import load_bundle
from plumbing.errors import EdgewatchError


def publish_bundle(
    path: Path, bootstrap: str, topic: str, trusted: dict[str, Ed25519PublicKey]
) -> None:
    """Verify locally first (never ship what the edge would reject), then produce durably."""
    bundle = load_bundle(path, trusted)
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "acks": "all",
            "enable.idempotence": True,
            "message.max.bytes": 16 * 1024 * 1024,
        }
    )
    errors: list[KafkaError] = []

    def on_delivery(err: KafkaError | None, _msg: Message) -> None:
        if err is not None:
            errors.append(err)

    producer.produce(
        topic,
        key=bundle.manifest.name.encode(),
        value=path.read_bytes(),
        headers={
            "model_version": str(bundle.manifest.version).encode(),
            "bundle_sha256": bundle.sha256.encode(),
        },
        on_delivery=on_delivery,
    )
    if producer.flush(30) != 0 or errors:
        raise EdgewatchError(f"publishing {path} to {topic} failed: {errors or 'timeout'}")
