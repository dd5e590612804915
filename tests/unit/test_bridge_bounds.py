"""The bridge's memory bounds without brokers: records in flight (count and bytes, on the
direct path and from the spool) and the intake queue (messages and bytes), each overflow
waiting and counted, nothing dropped."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bridge.forwarder import Backoff, Forwarder
from bridge.forwarder import Path as Route
from bridge.metrics import BridgeMetrics
from bridge.service import BridgeService
from bridge.settings import BridgeSettings
from bridge.spool import ROW_OVERHEAD, Record, Spool


@pytest.fixture
def silent_kafka() -> Iterator[str]:
    """A port that takes connections and never answers: produce() queues, no delivery
    comes, and no outage is reported while a test runs."""
    with socket.create_server(("127.0.0.1", 0), backlog=64) as server:
        yield f"127.0.0.1:{server.getsockname()[1]}"


def forwarder(bootstrap: str, tmp_path: Path, *, direct: bool, count: int, size: int) -> Forwarder:
    spool = Spool(tmp_path / "s.db", max_bytes=1 << 30, max_age_s=3600)
    return Forwarder(
        spool, {"bootstrap.servers": bootstrap, "log_level": 0}, BridgeMetrics(),
        inflight_max=count, inflight_max_bytes=size, probe=Backoff(0.5, 1.0),
        on_rejected=lambda record, error: None, direct=direct,
    )  # fmt: skip


def records(n: int, value_size: int, start: int = 0) -> list[Record]:
    out = []
    for i in range(start, start + n):
        record = Record("raw", "t", b"k", b"x" * value_size, [("event_id", f"e{i}".encode())])
        record.ack = (i + 1, 1)
        out.append(record)
    return out


def full(metrics: BridgeMetrics) -> float:
    return metrics.registry.get_sample_value("edgewatch_bridge_inflight_full_total") or 0.0


def test_direct_path_holds_records_back_past_the_count_bound(
    silent_kafka: str, tmp_path: Path
) -> None:
    fwd = forwarder(silent_kafka, tmp_path, direct=True, count=3, size=1 << 20)
    fwd.start_path()
    assert fwd.path is Route.DIRECT
    fwd.step(records(5, 10))
    assert fwd.inflight == 3
    assert fwd.waiting
    assert fwd.unacked == 5
    assert full(fwd.metrics) == 1


def test_direct_path_holds_records_back_past_the_byte_bound(
    silent_kafka: str, tmp_path: Path
) -> None:
    size = 1000 + 1 + ROW_OVERHEAD
    fwd = forwarder(silent_kafka, tmp_path, direct=True, count=100, size=2 * size + 10)
    fwd.start_path()
    fwd.step(records(4, 1000))
    assert fwd.inflight == 2
    assert fwd.unacked == 4
    assert full(fwd.metrics) == 1


def test_a_record_larger_than_the_byte_bound_goes_alone(silent_kafka: str, tmp_path: Path) -> None:
    fwd = forwarder(silent_kafka, tmp_path, direct=True, count=100, size=65536)
    fwd.start_path()
    fwd.step(records(2, 100_000))
    assert fwd.inflight == 1  # the first went (nothing else in flight), the second waits


def test_spool_rows_in_flight_stay_within_both_bounds(silent_kafka: str, tmp_path: Path) -> None:
    fwd = forwarder(silent_kafka, tmp_path, direct=False, count=4, size=1 << 20)
    fwd.spool.append(records(10, 10))
    fwd.step([])
    assert fwd.inflight == 4
    fwd.step([])
    assert fwd.inflight == 4  # nothing delivered, nothing more sent
    assert full(fwd.metrics) >= 1

    size = 500 + 1 + ROW_OVERHEAD
    fwd = forwarder(silent_kafka, tmp_path / "b", direct=False, count=100, size=3 * size)
    fwd.spool.append(records(10, 500))
    fwd.step([])
    assert fwd.inflight == 3
    assert fwd.spool.rows == 10  # nothing lost: the rest waits in the spool


def service(bootstrap: str, tmp_path: Path, capacity: int, max_bytes: int) -> BridgeService:
    settings = BridgeSettings.model_validate({
        "node_id": "t", "queue_capacity": capacity, "queue_max_bytes": max_bytes,
        "mqtt": {"port": 1, "receive_maximum": 1},
        "kafka": {"bootstrap_servers": bootstrap},
        "spool": {"path": str(tmp_path / "spool.db")}, "models": {"enabled": False},
    })  # fmt: skip
    bridge = BridgeService(settings)
    bridge._intake_open.set()
    return bridge


def batch(n: int, payload_size: int, start: int = 0) -> list[tuple[str, bytes, int, bool]]:
    return [("edge/d/raw/s", b"x" * payload_size, start + i + 1, False) for i in range(n)]


def intake_full(bridge: BridgeService) -> float:
    value = bridge.metrics.registry.get_sample_value("edgewatch_bridge_intake_full_total")
    return value or 0.0


def test_intake_waits_when_the_queue_is_full_and_goes_on_once_the_pump_takes(
    silent_kafka: str, tmp_path: Path
) -> None:
    bridge = service(silent_kafka, tmp_path, capacity=10, max_bytes=1 << 20)
    bridge._on_publish_batch(batch(6, 10))
    bridge._on_publish_batch(batch(4, 10, 6))
    blocked = threading.Thread(target=bridge._on_publish_batch, args=(batch(3, 10, 10),))
    blocked.start()
    time.sleep(0.3)
    assert blocked.is_alive()
    assert bridge.queue.qsize() == 2
    assert intake_full(bridge) == 1
    taken = bridge._take(0.1, Route.SPOOL)  # the pump takes what waits; room again
    blocked.join(2)
    assert not blocked.is_alive()
    taken += bridge._take(0.1, Route.SPOOL)
    assert [r.ack[0] for r in taken if r.ack] == list(range(1, 14))  # all, in order


def test_intake_bounds_bytes_but_lets_any_batch_into_an_empty_queue(
    silent_kafka: str, tmp_path: Path
) -> None:
    bridge = service(silent_kafka, tmp_path, capacity=1000, max_bytes=65536)
    bridge._on_publish_batch(batch(1, 100_000))  # larger than the bound: the queue was empty
    blocked = threading.Thread(target=bridge._on_publish_batch, args=(batch(1, 10, 1),))
    blocked.start()
    time.sleep(0.3)
    assert blocked.is_alive()
    bridge._intake_open.clear()  # stopping: the waiting batch is left unacked, not queued
    blocked.join(2)
    assert not blocked.is_alive()
    assert bridge.queue.qsize() == 1
