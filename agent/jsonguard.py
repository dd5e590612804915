"""Parsing untrusted JSON payloads with limits on size and nesting."""

from __future__ import annotations

from typing import Any

from plumbing.events import loads

INVALID_JSON = "invalid_json"
NOT_AN_OBJECT = "not_an_object"
TOO_LARGE = "payload_too_large"
TOO_DEEP = "too_deeply_nested"


class PayloadRejectedError(ValueError):
    """A payload that cannot become an event; ``reason`` is its dead-letter reason."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def nesting_depth(payload: bytes) -> int:
    """Deepest bracket nesting outside strings (only run on suspicious payloads)."""
    depth = deepest = 0
    in_string = escaped = False
    for byte in payload:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):  # [ {
            depth += 1
            deepest = max(deepest, depth)
        elif byte in (0x5D, 0x7D):
            depth -= 1
    return deepest


def parse_object(payload: bytes, *, max_bytes: int, max_depth: int) -> dict[str, Any]:
    """The payload as a JSON object, or :class:`PayloadRejectedError` saying why not."""
    if len(payload) > max_bytes:
        raise PayloadRejectedError(TOO_LARGE, f"{len(payload)} bytes, limit {max_bytes}")
    # Counting brackets is cheap (one pass that drops them); the exact scan runs only when
    # the count could exceed the limit.
    if len(payload) - len(payload.translate(None, b"[{")) > max_depth:
        depth = nesting_depth(payload)
        if depth > max_depth:
            raise PayloadRejectedError(TOO_DEEP, f"nesting depth {depth}, limit {max_depth}")
    try:
        document = loads(payload)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise PayloadRejectedError(INVALID_JSON, str(exc)[:200]) from exc
    if not isinstance(document, dict):
        raise PayloadRejectedError(NOT_AN_OBJECT, f"JSON {type(document).__name__}, not an object")
    return document
