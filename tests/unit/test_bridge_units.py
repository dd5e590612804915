"""Bridge pieces without brokers: routing, header encoding, spool bounds and policies, and
the bulk PUBLISH decoding and acks of the MQTT client it uses."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from bridge.routing import DEFAULT_ROUTES, MALFORMED_EVENT, MALFORMED_TOPIC, Router
from bridge.spool import Record, Spool, SpoolFullError, _decode_headers, _encode_headers
from plumbing.events import Topics, event_id_of
from plumbing.paho_io import BufferedClient, Publish


def test_routes_by_kind_with_device_key_and_headers() -> None:
    router = Router(Topics("edge"), DEFAULT_ROUTES, "box-1")
    routed = router.route(
        "edge/term-4/scored/payments", b'{"event_id": "e1", "model": {"version": 3}}'
    )
    assert (routed.topic, routed.key, routed.reject) == ("edge.scored.payments", b"term-4", None)
    assert dict(routed.headers) == {
        "mqtt_topic": b"edge/term-4/scored/payments", "node_id": b"box-1",
        "event_id": b"e1", "model_version": b"3",
    }  # fmt: skip
    status = router.route("edge/box-1/status/agent", b'{"state": "online"}')
    assert (status.topic, status.key) == ("edge.status", b"box-1/agent")
    raw = router.route("edge/term-4/raw/sensors", b"not json at all")
    assert raw.topic == "edge.raw.sensors"
    assert raw.reject is None  # raw bytes pass through; the agent judges them
    assert raw.event_id == event_id_of("edge/term-4/raw/sensors", b"not json at all")


def test_malformed_topics_and_events_are_rejected() -> None:
    router = Router(Topics("edge"), DEFAULT_ROUTES, "box-1")
    assert router.route("edge//raw/payments", b"{}").reject == MALFORMED_TOPIC
    assert router.route("edge/d/alerts/payments", b"[1]").reject == MALFORMED_EVENT


def test_non_printable_event_ids_fall_back_to_the_hash() -> None:
    payload = b'{"event_id": "a\\u0000b"}'
    assert event_id_of("t", payload, {"event_id": "a\x00b"}) == event_id_of("t", payload)


def test_header_codec_round_trip() -> None:
    headers = [("mqtt_topic", b"edge/d/raw/s"), ("event_id", b"\xe2\x9c\x93"), ("empty", b"")]
    assert _decode_headers(_encode_headers(headers)) == headers
    assert _decode_headers(_encode_headers([])) == []


def record(kind: str, size: int, n: int) -> Record:
    return Record(kind, "t", b"k", b"x" * size, [("event_id", str(n).encode())])


def test_pause_policy_stores_what_fits_and_refuses_the_rest(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.db", max_bytes=10_000, max_age_s=60, policy="pause")
    stored = spool.append([record("raw", 1000, i) for i in range(20)])
    assert 0 < stored < 20
    assert spool.bytes <= 10_000
    with pytest.raises(SpoolFullError):
        spool.append([record("raw", 1000, 99)])
    spool.delete_through(spool.read_after(0, 1)[0].seq)
    assert spool.append([record("raw", 1000, 100)]) == 1


def test_drop_oldest_raw_keeps_other_kinds_and_counts(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.db", max_bytes=20_000, max_age_s=60, policy="drop_oldest_raw")
    spool.append([record("scored", 1000, i) for i in range(5)])
    for i in range(30):
        spool.append([record("raw", 1000, 100 + i)])
    kinds = [r.kind for r in spool.read_after(0, 100)]
    assert kinds.count("scored") == 5
    assert spool.dropped["raw"] == 30 - kinds.count("raw")
    assert spool.bytes <= 20_000
    ids = [dict(r.headers)["event_id"] for r in spool.read_after(0, 100) if r.kind == "raw"]
    assert ids[-1] == b"129"  # the newest raw survived
    reopened = Spool(tmp_path / "s.db", max_bytes=20_000, max_age_s=60)
    assert (reopened.rows, reopened.bytes) == (spool.rows, spool.bytes)


def test_age_limit_expires_and_counts(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.db", max_bytes=1 << 20, max_age_s=10)
    old = record("alerts", 10, 1)
    old.created = 1.0  # long ago
    spool.append([old, record("raw", 10, 2)])
    assert spool.expire() == 1
    assert spool.expired["alerts"] == 1
    assert [r.kind for r in spool.read_after(0, 10)] == ["raw"]


def _rows(n: int, start: int = 0) -> list[Record]:
    return [Record("raw", "t", b"d", f"v{i}".encode(), [("event_id", f"e{i}".encode())])
            for i in range(start, start + n)]  # fmt: skip


def test_reading_back_just_committed_rows_matches_sqlite(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.db", max_bytes=1 << 20, max_age_s=3600)
    for start in range(0, 30, 10):
        spool.append(_rows(10, start))
    fresh = []
    cursor = 0
    while batch := spool.read_after(cursor, 1000):  # served from memory, group by group
        fresh += batch
        cursor = batch[-1].seq
    assert [r.seq for r in fresh] == list(range(1, 31))
    reopened = Spool(tmp_path / "s.db", max_bytes=1 << 20, max_age_s=3600)
    stored = reopened.read_after(0, 1000)  # a new process reads SQLite only
    as_tuples = [(r.seq, r.kind, r.topic, r.key, r.value, r.headers) for r in stored]
    assert as_tuples == [(r.seq, r.kind, r.topic, r.key, r.value, r.headers) for r in fresh]
    assert reopened.read_after(30, 1000) == []


def test_a_reader_behind_the_cache_gets_every_row_in_order(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.db", max_bytes=1 << 20, max_age_s=3600)
    for start in range(0, 40, 10):
        spool.append(_rows(10, start))
    first = spool.read_after(0, 15)  # smaller than a group: SQLite
    rest = spool.read_after(first[-1].seq, 1000)
    more = spool.read_after(rest[-1].seq, 1000)
    seqs = [r.seq for r in first + rest + more]
    while batch := spool.read_after(seqs[-1], 1000):
        seqs += [r.seq for r in batch]
    assert seqs == list(range(1, 41))


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _publish(
    topic: str, payload: bytes, mid: int, *, props: bytes = b"", dup: bool = False
) -> bytes:
    """An MQTT 5 QoS 1 PUBLISH packet as a broker sends it."""
    body = struct.pack("!H", len(topic.encode())) + topic.encode() + struct.pack("!H", mid)
    body += _varint(len(props)) + props + payload
    return bytes([0x32 | (0x08 if dup else 0)]) + _varint(len(body)) + body


def _client_reading(data: bytes) -> tuple[BufferedClient, list[list[Publish]]]:
    client = BufferedClient(callback_api_version=CallbackAPIVersion.VERSION2,
                            protocol=MQTTProtocolVersion.MQTTv5, manual_ack=True)  # fmt: skip
    batches: list[list[Publish]] = []
    client.on_publish_batch = batches.append
    client._read_buffer[: len(data)] = data
    client._read_end = len(data)
    return client, batches


def test_bulk_decoder_takes_whole_qos1_publishes_and_leaves_the_rest_to_paho() -> None:
    large = b"x" * 300  # a two-byte remaining length
    first = _publish("edge/d1/raw/s", b'{"a": 1}', 1)
    second = _publish("edge/d2/raw/s", large, 2, props=b"\x01\x01", dup=True)  # a property
    suback = b"\x90\x03\x00\x05\x01"
    client, _ = _client_reading(first + second + suback + _publish("edge/d3/raw/s", b"3", 3))
    assert client._decode_publishes() == [
        ("edge/d1/raw/s", b'{"a": 1}', 1, False), ("edge/d2/raw/s", large, 2, True),
    ]  # fmt: skip
    assert client._read_position == len(first + second)  # the SUBACK is paho's

    cut = _publish("edge/d4/raw/s", b"4" * 100, 4)
    client, _ = _client_reading(first + cut[:50])
    assert [p[2] for p in client._decode_publishes()] == [1]
    assert client._read_position == len(first)  # paho reads the rest of the cut packet


def test_acks_of_many_messages_are_one_write_of_pubacks() -> None:
    client, _ = _client_reading(b"")
    client.ack_many([1, 258])
    assert client._out_packet[-1]["packet"] == b"\x40\x02\x00\x01\x40\x02\x01\x02"
