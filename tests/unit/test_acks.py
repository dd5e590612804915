"""The agent's ack bookkeeping: a raw is complete only when every output was acknowledged."""

from __future__ import annotations

import time

from agent.acks import AckTracker, Publish

SCORED = Publish("edge/d1/scored/payments", b"{}")
ALERT = Publish("edge/d1/alerts/payments", b"{}")


def test_raw_completes_after_its_last_output() -> None:
    tracker = AckTracker()
    assert not tracker.register("raw-1", time.monotonic(), [(1, SCORED), (2, ALERT)])
    assert len(tracker) == 1
    assert tracker.published(1) is None
    done = tracker.published(2)
    assert done is not None
    assert done[0] == "raw-1"
    assert len(tracker) == 0
    assert tracker.idle.is_set()


def test_puback_before_registration_counts() -> None:
    tracker = AckTracker()
    assert tracker.published(7) is None  # the broker was faster than the worker
    assert tracker.register("raw-1", time.monotonic(), [(7, SCORED)])
    assert len(tracker) == 0


def test_refused_publish_keeps_raw_open_until_retry_is_acked() -> None:
    tracker = AckTracker(retry_delay_s=0.0)
    tracker.register("raw-1", time.monotonic(), [(1, SCORED), (2, ALERT)])
    assert tracker.published(1) is None
    tracker.refused(2)
    assert len(tracker) == 1, "a refused output must not complete its raw message"
    (retry,) = tracker.due_retries()
    assert retry.publish == ALERT
    assert tracker.due_retries() == []
    assert tracker.retried(retry.pending, 3, retry.publish) is None
    done = tracker.published(3)
    assert done is not None
    assert done[0] == "raw-1"
    assert tracker.idle.is_set()


def test_refusal_before_registration_is_retried() -> None:
    tracker = AckTracker(retry_delay_s=0.0)
    tracker.refused(5)
    assert not tracker.register("raw-1", time.monotonic(), [(5, SCORED)])
    (retry,) = tracker.due_retries()
    tracker.published(6)  # the retry's PUBACK overtakes its registration
    done = tracker.retried(retry.pending, 6, retry.publish)
    assert done is not None
    assert done[0] == "raw-1"


def test_retry_waits_for_its_delay() -> None:
    tracker = AckTracker(retry_delay_s=60.0)
    tracker.register("raw-1", time.monotonic(), [(1, SCORED)])
    tracker.refused(1)
    assert tracker.due_retries() == []
    assert len(tracker) == 1
