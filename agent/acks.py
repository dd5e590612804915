"""Acknowledge a raw message only after every message it produced was acknowledged.

The worker registers a raw message with the ids of its QoS 1 publishes; paho's network
thread reports each PUBACK. A PUBACK may arrive before registration finishes (the broker
is fast), so early acks are remembered. No lock is held while calling into paho.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any


@dataclass(slots=True)
class _Pending:
    token: Any
    remaining: int
    received: float


class AckTracker:
    """Counts outstanding publishes per raw message; returns raws that became complete."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._owner: dict[int, _Pending] = {}
        self._early: set[int] = set()
        self._open = 0
        self.idle = threading.Event()
        self.idle.set()

    def __len__(self) -> int:
        return self._open

    def register(self, token: Any, received: float, output_mids: Iterable[int]) -> bool:
        """Track a raw message; True when all its outputs were already acknowledged."""
        pending = _Pending(token, 0, received)
        with self._lock:
            for mid in output_mids:
                if mid in self._early:
                    self._early.discard(mid)
                else:
                    self._owner[mid] = pending
                    pending.remaining += 1
            if pending.remaining:
                self._open += 1
                self.idle.clear()
        return pending.remaining == 0

    def published(self, mid: int) -> tuple[Any, float] | None:
        """A PUBACK for ``mid``: the (token, latency_s) of a raw now complete, if any."""
        with self._lock:
            pending = self._owner.pop(mid, None)
            if pending is None:
                self._early.add(mid)
                return None
            pending.remaining -= 1
            if pending.remaining:
                return None
            self._open -= 1
            if self._open == 0:
                self.idle.set()
            self._changed.notify_all()
        return pending.token, time.monotonic() - pending.received

    def wait_below(self, limit: int, timeout_s: float) -> bool:
        """Block while ``limit`` or more raw messages are open; False on timeout."""
        with self._changed:
            return self._changed.wait_for(lambda: self._open < limit, timeout_s)
