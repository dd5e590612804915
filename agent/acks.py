"""Acknowledge a raw message only after every message it produced was acknowledged.

The worker registers a raw message with its QoS 1 publishes (message id, topic, payload);
paho's network thread reports each PUBACK. A PUBACK may arrive before registration
finishes (the broker is fast), so early acks are remembered. A publish the broker refused
(a failure reason code) does not count as done: it waits in a retry list and the raw
message stays unacked until a retry is acknowledged. No lock is held while calling paho.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple


class Publish(NamedTuple):
    topic: str
    payload: bytes
    retain: bool = False


@dataclass(slots=True)
class Pending:
    """One raw message (its ack token) and how many of its publishes are unacknowledged."""

    token: Any
    remaining: int
    received: float


class Retry(NamedTuple):
    pending: Pending
    publish: Publish
    due: float


class AckTracker:
    """Counts outstanding publishes per raw message; returns raws that became complete."""

    def __init__(self, retry_delay_s: float = 1.0) -> None:
        self.retry_delay_s = retry_delay_s
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._owner: dict[int, tuple[Pending, Publish]] = {}
        self._early: set[int] = set()
        self._early_refused: set[int] = set()
        self._retries: list[Retry] = []
        self._open = 0
        self.idle = threading.Event()
        self.idle.set()

    def __len__(self) -> int:
        return self._open

    def register(self, token: Any, received: float, outputs: Iterable[tuple[int, Publish]]) -> bool:
        """Track a raw message; True when all its outputs were already acknowledged."""
        pending = Pending(token, 0, received)
        with self._lock:
            self._attach(pending, outputs)
            if pending.remaining:
                self._open += 1
                self.idle.clear()
        return pending.remaining == 0

    def retried(self, pending: Pending, mid: int, publish: Publish) -> tuple[Any, float] | None:
        """A refused publish was sent again as ``mid``; completes like :meth:`published`."""
        with self._lock:
            pending.remaining -= 1  # the refused one; _attach counts its replacement
            self._attach(pending, [(mid, publish)])
            return self._complete(pending) if pending.remaining == 0 else None

    def _attach(self, pending: Pending, outputs: Iterable[tuple[int, Publish]]) -> None:
        for mid, publish in outputs:
            if mid in self._early:
                self._early.discard(mid)
                continue
            pending.remaining += 1
            if mid in self._early_refused:
                self._early_refused.discard(mid)
                self._retries.append(Retry(pending, publish, self._due()))
            else:
                self._owner[mid] = (pending, publish)

    def published(self, mid: int) -> tuple[Any, float] | None:
        """A PUBACK for ``mid``: the (token, latency_s) of a raw now complete, if any."""
        with self._lock:
            entry = self._owner.pop(mid, None)
            if entry is None:
                self._early.add(mid)
                return None
            pending = entry[0]
            pending.remaining -= 1
            return self._complete(pending) if pending.remaining == 0 else None

    def refused(self, mid: int) -> None:
        """The broker refused ``mid``: keep its raw open and schedule the publish again."""
        with self._lock:
            entry = self._owner.pop(mid, None)
            if entry is None:
                self._early_refused.add(mid)
            else:
                self._retries.append(Retry(entry[0], entry[1], self._due()))

    def due_retries(self) -> list[Retry]:
        """Refused publishes whose retry delay has passed (taken off the list)."""
        now = time.monotonic()
        with self._lock:
            due = [r for r in self._retries if r.due <= now]
            if due:
                self._retries = [r for r in self._retries if r.due > now]
        return due

    def _due(self) -> float:
        return time.monotonic() + self.retry_delay_s

    def _complete(self, pending: Pending) -> tuple[Any, float]:
        self._open -= 1
        if self._open == 0:
            self.idle.set()
        self._changed.notify_all()
        return pending.token, time.monotonic() - pending.received

    def wait_below(self, limit: int, timeout_s: float) -> bool:
        """Block while ``limit`` or more raw messages are open; False on timeout."""
        with self._changed:
            return self._changed.wait_for(lambda: self._open < limit, timeout_s)
