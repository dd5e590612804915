"""The champion: the model in production, i.e. the newest valid bundle of a name on edge.models.

``edge.models`` is compacted and keyed by model name, and the agent only ever moves to a
higher version, so the champion is the validly signed bundle of that name with the highest
version among the records read (:func:`newest_valid`, no I/O). Records that fail the
signature or digest check are not the champion (no box would have loaded them); each is
reported. When the topic holds none, the bundle the boxes were shipped with stands in.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from models.bundle import Bundle, BundleError, load_bundle, verify_bundle
from models.kafka_read import Record, read_to_end
from plumbing.settings import KafkaSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Champion:
    bundle: Bundle
    source: str  # "topic@partition:offset" or the fallback file's path

    def describe(self) -> dict[str, object]:
        return {
            "name": self.bundle.manifest.name,
            "version": self.bundle.manifest.version,
            "bundle_sha256": self.bundle.sha256,
            "key_id": self.bundle.key_id,
            "source": self.source,
        }


def newest_valid(
    records: list[Record], name: str, trusted: dict[str, Ed25519PublicKey], topic: str
) -> tuple[Champion | None, list[str]]:
    """The highest-version verified bundle named ``name``, and why other records were skipped."""
    best: Champion | None = None
    problems: list[str] = []
    for record in records:
        if record.key != name.encode() or not record.value:
            continue
        where = f"{topic}@{record.partition}:{record.offset}"
        try:
            bundle = verify_bundle(record.value, trusted)
        except BundleError as exc:
            problems.append(f"{where}: {exc}")
            continue
        if bundle.manifest.name != name:
            problems.append(f"{where}: keyed {name} but the manifest names {bundle.manifest.name}")
            continue
        if best is None or bundle.manifest.version >= best.bundle.manifest.version:
            best = Champion(bundle, where)
    return best, problems


def find_champion(
    kafka: KafkaSettings,
    topic: str,
    name: str,
    trusted: dict[str, Ed25519PublicKey],
    *,
    fallback: Path | None,
    timeout_s: float = 60.0,
) -> Champion | None:
    """The champion from ``topic``, else the fallback bundle file, else None (first model)."""
    champion, problems = newest_valid(read_to_end(kafka, topic, timeout_s), name, trusted, topic)
    for problem in problems:
        log.warning("not a champion: %s", problem)
    if champion is None and fallback is not None:
        champion = Champion(load_bundle(fallback, trusted), str(fallback))
    return champion
