"""Wire contracts: topic names, event ids and the scored-event document.

Everything that crosses MQTT or Kafka is named here once, so the agent, the bridge and the
model tools cannot disagree about it.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass
from typing import Any, Literal

import orjson

EventKind = Literal["raw", "scored", "alerts", "deadletter"]
EVENT_KINDS: tuple[EventKind, ...] = ("raw", "scored", "alerts", "deadletter")
MAX_EVENT_ID_CHARS = 128


@dataclass(frozen=True, slots=True)
class TopicParts:
    """The parts of ``{prefix}/{device}/{kind}/{stream}``."""

    device: str
    kind: str
    stream: str


@dataclass(frozen=True, slots=True)
class Topics:
    """Builds and parses edgewatch MQTT topic names under one prefix."""

    prefix: str = "edge"

    def event(self, device: str, kind: EventKind, stream: str) -> str:
        return f"{self.prefix}/{device}/{kind}/{stream}"

    def event_filter(self, kind: EventKind, stream: str = "+") -> str:
        return f"{self.prefix}/+/{kind}/{stream}"

    def status(self, node: str, service: str) -> str:
        return f"{self.prefix}/{node}/status/{service}"

    def status_filter(self) -> str:
        return f"{self.prefix}/+/status/+"

    def model(self, name: str) -> str:
        return f"{self.prefix}/models/{name}"

    def rollout(self, node: str, stream: str) -> str:
        """Where a box announces each model rollout transition of a stream."""
        return f"{self.prefix}/{node}/rollout/{stream}"

    def parse(self, topic: str) -> TopicParts | None:
        """Split an event or status topic; None when it is not one of ours."""
        parts = topic.split("/")
        if len(parts) != 4 or parts[0] != self.prefix or not all(parts[1:]):
            return None
        return TopicParts(device=parts[1], kind=parts[2], stream=parts[3])


def event_id_of(topic: str, payload: bytes, document: object = None) -> str:
    """The stable id of an event: the payload's own ``event_id``, else a content hash.

    The hash covers the topic and the exact payload bytes, so a redelivered message gets the
    same id on every box and in every service.
    """
    own = document.get("event_id") if isinstance(document, dict) else None
    return event_id_from(topic, payload, own)


def event_id_from(topic: str, payload: bytes, own: object) -> str:
    """:func:`event_id_of` given the value of the payload's ``event_id`` field (None if none)."""
    # Printable only: ids travel in Kafka headers and spool records, never raw bytes.
    if isinstance(own, str) and 0 < len(own) <= MAX_EVENT_ID_CHARS and own.isprintable():
        return own
    digest = hashlib.sha256(topic.encode("utf-8") + b"\x00" + payload).hexdigest()
    return digest[:32]


def loads(data: bytes) -> Any:
    """Parse JSON as ``json.loads`` does; orjson does the common case fast.

    What orjson refuses (NaN and Infinity literals, lone surrogates, UTF-16 input, broken
    documents) goes to the standard library, which decides: accepted documents and error
    types stay those of ``json.loads``. One difference: orjson reads an integer beyond 64
    bits as a float (every consumer here wants a float of it anyway).
    """
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return json.loads(data)


def dumps(document: dict[str, Any]) -> bytes:
    """Compact JSON as UTF-8 bytes, the one encoding of every event; NaN and ±inf → null."""
    try:
        return orjson.dumps(document)
    except orjson.JSONEncodeError:
        # Integers beyond 64 bits (from documents built elsewhere) are outside its range.
        return json.dumps(_finite(document), separators=(",", ":"), allow_nan=False).encode()


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value


def deadletter_document(
    *, event_id: str, topic: str, reason: str, detail: str, payload: bytes, service: str
) -> dict[str, Any]:
    """A dead-letter entry: why, where from, and enough of the input to look at it."""
    preview = payload[:512]
    return {
        "event_id": event_id,
        "reason": reason,
        "detail": detail[:500],
        "source_topic": topic,
        "payload_bytes": len(payload),
        "payload_preview": preview.decode("utf-8", errors="replace"),
        "rejected_by": service,
        "rejected_at": time.time(),
    }
