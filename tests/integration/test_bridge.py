"""The bridge against real Mosquitto and Kafka: crashes, outages and a full spool lose nothing."""

from __future__ import annotations

import json
import random
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from plumbing.mqtt import MqttConnection
from plumbing.settings import MqttSettings
from tests.integration.harness import (
    Collector,
    ServiceProcess,
    bridge_config,
    consume,
    publish_all,
    scrape,
    start_bridge,
    wait_for,
)

pytestmark = [pytest.mark.broker, pytest.mark.slow]


def sequence_items(prefix: str, count: int, devices: int = 10, stream: str = "payments"):
    """Raw events with a per-device sequence number and their own event ids."""
    items = []
    for i in range(count):
        device = f"dev{i % devices}"
        body = {"event_id": f"e{i}", "device": device, "seq": i // devices, "amount": i % 97}
        items.append((f"{prefix}/{device}/raw/{stream}", json.dumps(body).encode()))
    return items


def event_ids(records: list) -> list[str]:
    return [dict(r.headers())["event_id"].decode() for r in records]


def assert_in_order_per_device(records: list) -> None:
    """First arrivals of each device's sequence numbers are increasing (duplicates allowed)."""
    seen: dict[str, int] = {}
    for record in records:
        body = json.loads(record.value())
        device, seq = body["device"], body["seq"]
        last = seen.get(device, -1)
        if seq > last:
            assert seq == last + 1, f"{device}: {seq} arrived after {last} (gap)"
            seen[device] = seq
        # seq <= last: a duplicate of something already delivered; fine


def background(port: int, items: list, rate: float) -> threading.Thread:
    thread = threading.Thread(target=publish_all, args=(port, items, rate), daemon=True)
    thread.start()
    return thread


def kill_until_sent(  # noqa: PLR0917 - the loop both kill tests share
    bridge: ServiceProcess, sender: threading.Thread, restart: Callable[[int], ServiceProcess],
    rng: random.Random, pause_s: tuple[float, float], kills_max: int,
    before_kill: Callable[[], None] = lambda: None,
) -> tuple[ServiceProcess, int]:  # fmt: skip
    """kill -9 the bridge after random pauses and restart it, while ``sender`` publishes."""
    kills = 0
    while sender.is_alive() and kills < kills_max:
        time.sleep(rng.uniform(*pause_s))
        before_kill()
        bridge.kill()
        kills += 1
        bridge = restart(kills)
    sender.join(120)
    return bridge, kills


def all_in_kafka(bootstrap: str, prefix: str, expected: set[str], bridge: ServiceProcess) -> list:
    """Every raw record until each id in ``expected`` arrived; then the bridge stops."""
    try:
        return consume(bootstrap, [f"t.{prefix}.raw.payments"],
                       until=lambda r: expected <= set(event_ids(r)))  # fmt: skip
    finally:
        bridge.stop()


def test_kill_9_at_random_moments_loses_nothing(
    tmp_path: Path, mqtt_port: int, kafka_bootstrap: str, mqtt_prefix: str
) -> None:
    items = sequence_items(mqtt_prefix, 20_000)
    config = bridge_config(tmp_path, mqtt_port, kafka_bootstrap, mqtt_prefix)
    expected = {f"e{i}" for i in range(len(items))}
    with Collector(mqtt_port, [f"{mqtt_prefix}/+/status/+"]) as collector:
        bridge = start_bridge(config, tmp_path / "b0.log", collector)
        sender = background(mqtt_port, items, rate=4000)
        bridge, kills = kill_until_sent(
            bridge, sender, lambda n: start_bridge(config, tmp_path / f"b{n}.log", collector),
            random.Random(11), (0.3, 1.2), 4,
        )  # fmt: skip
        records = all_in_kafka(kafka_bootstrap, mqtt_prefix, expected, bridge)
    ids = event_ids(records)
    assert kills >= 2
    assert set(ids) == expected, f"missing {len(expected - set(ids))}"
    print(f"{kills} kills, {len(ids) - len(set(ids))} duplicates")
    assert_in_order_per_device(records)


def test_kafka_outage_of_30s_loses_nothing_and_keeps_order(
    tmp_path: Path, mqtt_port: int, kafka_bootstrap: str, mqtt_prefix: str, stack: object
) -> None:
    items = sequence_items(mqtt_prefix, 12_000)
    config = bridge_config(tmp_path, mqtt_port, kafka_bootstrap, mqtt_prefix)
    with Collector(mqtt_port, [f"{mqtt_prefix}/+/status/+"]) as collector:
        bridge = start_bridge(config, tmp_path / "b.log", collector)
        sender = background(mqtt_port, items, rate=300)
        try:
            time.sleep(5)
            stack.stop_kafka()  # type: ignore[attr-defined]
            down_at = time.monotonic()
            time.sleep(30)
            spool_rows = sqlite3.connect(tmp_path / "spool.db").execute(
                "SELECT COUNT(*) FROM spool").fetchone()[0]  # fmt: skip
            stack.start_kafka()  # type: ignore[attr-defined]
            outage = time.monotonic() - down_at
            sender.join(120)
            expected = {f"e{i}" for i in range(len(items))}
            records = consume(kafka_bootstrap, [f"t.{mqtt_prefix}.raw.payments"],
                              until=lambda r: expected <= set(event_ids(r)))  # fmt: skip
            assert bridge.alive()
        finally:
            bridge.stop()
    assert outage >= 30
    assert spool_rows > 1000, "messages were not spooled during the outage"
    assert set(event_ids(records)) == expected
    assert_in_order_per_device(records)


def test_restart_while_kafka_down_keeps_spool_and_drains(
    tmp_path: Path, mqtt_port: int, kafka_bootstrap: str, mqtt_prefix: str, stack: object
) -> None:
    items = sequence_items(mqtt_prefix, 3000)
    config = bridge_config(tmp_path, mqtt_port, kafka_bootstrap, mqtt_prefix)
    with Collector(mqtt_port, [f"{mqtt_prefix}/+/status/+"]) as collector:
        bridge = start_bridge(config, tmp_path / "b1.log", collector)
        stack.stop_kafka()  # type: ignore[attr-defined]
        try:
            publish_all(mqtt_port, items)
            db = tmp_path / "spool.db"
            count = "SELECT COUNT(*) FROM spool"
            wait_for(lambda: sqlite3.connect(db).execute(count).fetchone()[0] >= len(items),
                     30, "everything spooled")  # fmt: skip
            assert bridge.terminate(30) == 0
            bridge = start_bridge(config, tmp_path / "b2.log", collector)
            assert sqlite3.connect(db).execute(count).fetchone()[0] >= len(items)
        finally:
            stack.start_kafka()  # type: ignore[attr-defined]
        try:
            expected = {f"e{i}" for i in range(len(items))}
            records = consume(kafka_bootstrap, [f"t.{mqtt_prefix}.raw.payments"],
                              until=lambda r: expected <= set(event_ids(r)))  # fmt: skip
            wait_for(lambda: sqlite3.connect(db).execute(count).fetchone()[0] == 0, 30,
                     "the spool to drain")  # fmt: skip
        finally:
            bridge.stop()
    assert set(event_ids(records)) == expected
    assert_in_order_per_device(records)


def test_full_spool_drops_oldest_raw_keeps_scored_and_stays_up(
    tmp_path: Path, mqtt_port: int, mqtt_prefix: str, stack_module: object
) -> None:
    dead_kafka = f"127.0.0.1:{stack_module.free_port()}"  # type: ignore[attr-defined]
    metrics_port = stack_module.free_port()  # type: ignore[attr-defined]
    config = bridge_config(
        tmp_path, mqtt_port, dead_kafka, mqtt_prefix, metrics_port=metrics_port,
        spool='max_bytes = 1048576\noverflow = "drop_oldest_raw"\n',
    )  # fmt: skip
    blob = "x" * 2000
    raw = [
        (f"{mqtt_prefix}/d{i % 3}/raw/payments", json.dumps({"event_id": f"r{i}", "pad": blob}))
        for i in range(1500)
    ]
    scored = [
        (f"{mqtt_prefix}/d{i % 3}/scored/payments", json.dumps({"event_id": f"s{i}"}))
        for i in range(100)
    ]
    with Collector(mqtt_port, [f"{mqtt_prefix}/+/status/+"]) as collector:
        bridge = start_bridge(config, tmp_path / "b.log", collector)
        try:
            items = [(t, body.encode()) for t, body in raw[:750] + scored + raw[750:]]
            publish_all(mqtt_port, items)
            dropped = 'edgewatch_bridge_spool_dropped_total{cause="overflow",kind="raw"}'
            wait_for(lambda: scrape(metrics_port).get(dropped, 0) > 0, 30, "drops counted")
            wait_for(lambda: scrape(metrics_port)["edgewatch_bridge_received_total{kind=\"raw\"}"]
                     >= len(raw), 30, "every message taken in")  # fmt: skip
            raw_rows = "SELECT COUNT(*) FROM spool WHERE kind = 'raw'"
            wait_for(lambda: sqlite3.connect(tmp_path / "spool.db").execute(raw_rows).fetchone()[0]
                     + scrape(metrics_port)[dropped] == len(raw), 30,
                     "every raw message spooled or counted as dropped")  # fmt: skip
            samples = scrape(metrics_port)
            assert bridge.alive()
        finally:
            bridge.stop()
    db = sqlite3.connect(tmp_path / "spool.db")
    kinds = dict(db.execute("SELECT kind, COUNT(*) FROM spool GROUP BY kind").fetchall())
    size = db.execute("SELECT SUM(size) FROM spool").fetchone()[0]
    assert kinds["scored"] == len(scored), "scored events must survive the overflow policy"
    assert kinds["raw"] + samples[dropped] == len(raw)
    assert size <= 1048576
    newest = {r[0] for r in db.execute("SELECT json_extract(value, '$.event_id') FROM spool")}
    assert f"r{len(raw) - 1}" in newest
    assert "r0" not in newest  # the oldest went first


def test_full_spool_with_pause_policy_withholds_acks_and_loses_nothing(
    tmp_path: Path, mqtt_port: int, kafka_bootstrap: str, mqtt_prefix: str, stack_module: object
) -> None:
    dead_kafka = f"127.0.0.1:{stack_module.free_port()}"  # type: ignore[attr-defined]
    metrics_port = stack_module.free_port()  # type: ignore[attr-defined]
    paused = bridge_config(
        tmp_path, mqtt_port, dead_kafka, mqtt_prefix, metrics_port=metrics_port,
        spool='max_bytes = 1048576\noverflow = "pause"\n',
    )  # fmt: skip
    items = [(topic, json.dumps({**json.loads(body), "pad": "y" * 2000}).encode())
             for topic, body in sequence_items(mqtt_prefix, 1200)]  # fmt: skip
    with Collector(mqtt_port, [f"{mqtt_prefix}/+/status/+"]) as collector:
        bridge = start_bridge(paused, tmp_path / "b1.log", collector)
        publish_all(mqtt_port, items)
        wait_for(lambda: scrape(metrics_port).get("edgewatch_bridge_spool_full_total", 0) > 0,
                 30, "the spool to fill")  # fmt: skip
        assert bridge.alive()
        assert bridge.terminate(30) == 0
        # Same session and spool, now with a reachable Kafka: the withheld messages arrive.
        healthy = Path(str(paused))
        healthy.write_text(healthy.read_text().replace(dead_kafka, kafka_bootstrap))
        bridge = start_bridge(healthy, tmp_path / "b2.log", collector)
        try:
            expected = {f"e{i}" for i in range(len(items))}
            records = consume(kafka_bootstrap, [f"t.{mqtt_prefix}.raw.payments"],
                              until=lambda r: expected <= set(event_ids(r)))  # fmt: skip
        finally:
            bridge.stop()
    assert set(event_ids(records)) == expected
    assert_in_order_per_device(records)


def test_oversize_and_malformed_go_to_dead_letter(
    tmp_path: Path, mqtt_port: int, kafka_bootstrap: str, mqtt_prefix: str
) -> None:
    config = bridge_config(tmp_path, mqtt_port, kafka_bootstrap, mqtt_prefix)
    good = sequence_items(mqtt_prefix, 50)
    huge = b'{"event_id": "huge", "pad": "' + b"z" * 1_500_000 + b'"}'
    bad = [
        (f"{mqtt_prefix}/dev1/raw/payments", huge),
        (f"{mqtt_prefix}/dev1/scored/payments", b"this is not json"),
        (f"{mqtt_prefix}/dev1/alerts/payments", b"[1, 2, 3]"),
        (f"{mqtt_prefix}//raw/payments", b'{"event_id": "no-device"}'),
    ]  # fmt: skip
    with Collector(mqtt_port, [f"{mqtt_prefix}/+/status/+"]) as collector:
        bridge = start_bridge(config, tmp_path / "b.log", collector)
        try:
            publish_all(mqtt_port, good[:25] + bad + good[25:])
            dead = consume(kafka_bootstrap, [f"t.{mqtt_prefix}.deadletter"],
                           until=lambda r: len(r) >= len(bad))  # fmt: skip
            raw = consume(kafka_bootstrap, [f"t.{mqtt_prefix}.raw.payments"],
                          until=lambda r: len(r) >= len(good))  # fmt: skip
            assert bridge.alive()
        finally:
            bridge.stop()
    reasons = sorted(json.loads(r.value())["reason"] for r in dead)
    assert reasons == sorted(["too_large_for_kafka", "malformed_event", "malformed_event",
                              "malformed_topic"])  # fmt: skip
    assert all(len(r.value()) < 10_000 for r in dead)
    assert {json.loads(r.value())["event_id"] for r in raw} == {f"e{i}" for i in range(50)}
    headers = dict(raw[0].headers())
    assert headers["node_id"] == f"node-{mqtt_prefix}".encode()
    assert headers["mqtt_topic"].startswith(mqtt_prefix.encode())
    assert raw[0].key().startswith(b"dev")


def switches(port: int, to: str) -> float:
    """Path switches this bridge process made, to ``to`` ('direct' or 'spool'); -1 if down."""
    try:
        return scrape(port).get(f'edgewatch_bridge_path_switches_total{{to="{to}"}}', 0)
    except OSError:
        return -1


def test_kill_9_right_after_each_switch_loses_nothing_and_keeps_order(
    tmp_path: Path, mqtt_port: int, kafka_bootstrap: str, mqtt_prefix: str, *, stack: object,
    stack_module: object,
) -> None:  # fmt: skip
    """Direct → spool (Kafka stopped) and spool → direct (Kafka back, spool replayed): the
    bridge is killed as soon as its metrics show each switch, and restarted."""
    items = sequence_items(mqtt_prefix, 16_000)
    metrics_port = stack_module.free_port()  # type: ignore[attr-defined]
    config = bridge_config(tmp_path, mqtt_port, kafka_bootstrap, mqtt_prefix,
                           metrics_port=metrics_port)  # fmt: skip
    db = tmp_path / "spool.db"
    with Collector(mqtt_port, [f"{mqtt_prefix}/+/status/+"]) as collector:
        bridge = start_bridge(config, tmp_path / "b0.log", collector)
        sender = background(mqtt_port, items, rate=400)
        try:
            wait_for(lambda: scrape(metrics_port)["edgewatch_bridge_direct_path"] == 1, 10,
                     "the direct path")  # fmt: skip
            time.sleep(3)
            stack.stop_kafka()  # type: ignore[attr-defined]
            wait_for(lambda: switches(metrics_port, "spool") >= 1, 30, "the switch to the spool")
            bridge.kill()
            rescued = sqlite3.connect(db).execute("SELECT COUNT(*) FROM spool").fetchone()[0]
            bridge = start_bridge(config, tmp_path / "b1.log", collector)
            time.sleep(5)  # spooling while Kafka is down
        finally:
            stack.start_kafka()  # type: ignore[attr-defined]
        try:
            wait_for(lambda: switches(metrics_port, "direct") >= 1, 120, "the switch back")
            bridge.kill()
            left = sqlite3.connect(db).execute("SELECT COUNT(*) FROM spool").fetchone()[0]
            bridge = start_bridge(config, tmp_path / "b2.log", collector)
            sender.join(120)
            expected = {f"e{i}" for i in range(len(items))}
            records = consume(kafka_bootstrap, [f"t.{mqtt_prefix}.raw.payments"],
                              until=lambda r: expected <= set(event_ids(r)))  # fmt: skip
            wait_for(lambda: scrape(metrics_port)["edgewatch_bridge_direct_path"] == 1, 60,
                     "the direct path again")  # fmt: skip
        finally:
            bridge.stop()
    ids = event_ids(records)
    print(f"rescued {rescued} rows, {left} left at the second kill, "
          f"{len(ids) - len(set(ids))} duplicates")  # fmt: skip
    assert rescued > 0, "the switch to the spool spooled nothing"
    assert set(ids) == expected, f"missing {len(expected - set(ids))}"
    assert_in_order_per_device(records)


def bursts(port: int, items: list, size: int, pause_s: float) -> threading.Thread:
    """Publish ``items`` in bursts of ``size`` (each waits for its PUBACKs), ``pause_s`` apart."""

    def run() -> None:
        settings = MqttSettings(port=port, session_expiry_s=0)
        connection = MqttConnection(settings, f"pub-{uuid.uuid4().hex[:8]}")
        connection.start()
        for start in range(0, len(items), size):
            connection.publish_all(items[start : start + size])
            time.sleep(pause_s)
        connection.stop()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_kill_9_while_flapping_between_direct_path_and_spool(
    tmp_path: Path, mqtt_port: int, kafka_bootstrap: str, mqtt_prefix: str, stack_module: object
) -> None:
    """Bursts with pauses, and a max_wait (4 ms) below Kafka's ack latency (5 ms linger and
    more): each burst sends the bridge to the spool, each pause (all delivered) brings it
    back to the direct path.
    kill -9 at random moments lands on both paths and on switches both ways."""
    items = sequence_items(mqtt_prefix, 20_000)
    metrics_port = stack_module.free_port()  # type: ignore[attr-defined]
    config = bridge_config(
        tmp_path, mqtt_port, kafka_bootstrap, mqtt_prefix, metrics_port=metrics_port,
        extra="[direct]\nlinger_ms = 5\nmax_wait_s = 0.004\nresume_wait_s = 0.003\n",
    )  # fmt: skip
    flips = {"direct": 0.0, "spool": 0.0}

    def count_switches() -> None:
        for to in flips:
            flips[to] += max(0.0, switches(metrics_port, to))

    expected = {f"e{i}" for i in range(len(items))}
    with Collector(mqtt_port, [f"{mqtt_prefix}/+/status/+"]) as collector:
        bridge = start_bridge(config, tmp_path / "b0.log", collector)
        sender = bursts(mqtt_port, items, size=500, pause_s=0.3)
        bridge, kills = kill_until_sent(
            bridge, sender, lambda n: start_bridge(config, tmp_path / f"b{n}.log", collector),
            random.Random(7), (0.8, 2.0), 5, before_kill=count_switches,
        )  # fmt: skip
        records = all_in_kafka(kafka_bootstrap, mqtt_prefix, expected, bridge)
    ids = event_ids(records)
    print(f"{kills} kills, switches {flips}, {len(ids) - len(set(ids))} duplicates")
    assert kills >= 2
    assert flips["spool"] >= kills, "the bridge hardly left the direct path"
    assert flips["direct"] >= kills, "the bridge hardly came back to the direct path"
    assert set(ids) == expected, f"missing {len(expected - set(ids))}"
    assert_in_order_per_device(records)
