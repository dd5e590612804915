"""BufferedClient: paho's small reads served from one large read; queued packets joined."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.client import DISCONNECT, PUBACK, PUBLISH
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from plumbing.paho_io import READ_SIZE, WRITE_COALESCE_MAX, BufferedClient


@pytest.fixture
def client() -> BufferedClient:
    return BufferedClient(
        callback_api_version=CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv5
    )


@pytest.fixture
def wire(client: BufferedClient) -> Iterator[socket.socket]:
    """The broker's end of a socket pair whose other end the client reads."""
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    client._sock = ours
    yield theirs
    client._sock_close()
    theirs.close()


def _publish_packet(topic: bytes, payload: bytes) -> bytes:
    """An MQTT 5 QoS 0 PUBLISH as a broker sends it (no properties)."""
    body = len(topic).to_bytes(2, "big") + topic + b"\x00" + payload
    length, n = bytearray(), len(body)
    while True:
        n, byte = divmod(n, 128)
        length.append(byte | (128 if n else 0))
        if not n:
            return b"\x30" + bytes(length) + body


def _receiving(client: BufferedClient) -> list[bytes]:
    got: list[bytes] = []
    client.on_message = lambda _client, _userdata, message: got.append(message.payload)
    return got


def test_small_reads_come_from_one_system_read(client: BufferedClient, wire: socket.socket) -> None:
    data = bytes(range(256)) * 40
    wire.sendall(data)
    got = [client._sock_recv(1), client._sock_recv(2), client._sock_recv(100)]
    # The first read took everything: the socket itself has nothing left.
    assert isinstance(client._sock, socket.socket)
    with pytest.raises(BlockingIOError):
        client._sock.recv(1, socket.MSG_PEEK)
    while sum(map(len, got)) < len(data):
        got.append(client._sock_recv(4096))
    assert b"".join(got) == data
    assert [len(chunk) for chunk in got[:3]] == [1, 2, 100]


def test_every_buffered_packet_is_handled_in_one_loop_read(
    client: BufferedClient, wire: socket.socket
) -> None:
    got = _receiving(client)
    payloads = [f"message {i}".encode() * 3 for i in range(300)]
    wire.sendall(b"".join(_publish_packet(b"edge/d1/raw/x", p) for p in payloads))
    assert client.loop_read() == paho.MQTT_ERR_SUCCESS
    assert got == payloads


def test_a_steady_stream_cannot_starve_writes(client: BufferedClient, wire: socket.socket) -> None:
    """One socket read per loop_read: paho's loop gets to write between two of them."""
    got = _receiving(client)
    payloads = [bytes([i % 256]) * 1000 for i in range(3 * READ_SIZE // 1000)]
    wire.sendall(b"".join(_publish_packet(b"edge/d1/raw/x", p) for p in payloads))
    rounds = 0
    while len(got) < len(payloads) and rounds < 10:
        handled = len(got)
        client.loop_read()
        assert len(got) - handled <= READ_SIZE // 1000  # at most one buffer's worth
        rounds += 1
    assert got == payloads
    assert rounds >= 3


def test_a_closed_peer_is_a_lost_connection(client: BufferedClient, wire: socket.socket) -> None:
    wire.sendall(b"ab")
    wire.shutdown(socket.SHUT_WR)
    assert client._sock_recv(2) == b"ab"
    client._fills_left = 1  # as at the start of paho's next read round
    assert client._sock_recv(1) == b""


def test_nothing_waiting_raises_blocking_io(client: BufferedClient, wire: socket.socket) -> None:
    wire.sendall(b"ab")
    assert client._sock_recv(1) == b"a"
    assert client._sock_recv(1) == b"b"
    client._fills_left = 1  # as at the start of paho's next read round
    with pytest.raises(BlockingIOError):
        client._sock_recv(1)


def test_closing_forgets_buffered_bytes(client: BufferedClient, wire: socket.socket) -> None:
    wire.sendall(b"old connection")
    assert client._sock_recv(3) == b"old"
    client._sock_close()
    assert not client._buffered()


def _queued(command: int, data: bytes, qos: int = 1) -> Any:
    return {"command": command, "mid": 1, "qos": qos, "pos": 0, "to_process": len(data),
            "packet": data, "info": None}  # fmt: skip


def test_queued_packets_are_joined_up_to_one_needing_a_callback(client: BufferedClient) -> None:
    queue = client._out_packet
    queue.extend([
        _queued(PUBACK, b"a1"), _queued(PUBLISH | 2, b"p1"), _queued(PUBACK, b"a2"),
        _queued(PUBLISH, b"q0", qos=0), _queued(PUBACK, b"a3"), _queued(DISCONNECT, b"d"),
    ])  # fmt: skip
    client._coalesce_queued_packets()
    assert [p["packet"] for p in queue] == [b"a1p1a2", b"q0", b"a3", b"d"]
    assert queue[0]["to_process"] == 6
    assert queue[0]["command"] & 0xF0 not in (PUBLISH, DISCONNECT)


def test_a_partly_written_packet_is_left_alone(client: BufferedClient) -> None:
    first = _queued(PUBACK, b"abcd")
    first["pos"], first["to_process"] = 2, 2
    client._out_packet.extend([first, _queued(PUBACK, b"ef")])
    client._coalesce_queued_packets()
    assert [p["packet"] for p in client._out_packet] == [b"abcd", b"ef"]


def test_one_wake_up_per_write_round(client: BufferedClient, wire: socket.socket) -> None:
    """Packets queued by other threads wake the network thread once until it writes."""
    wake_reader, client._sockpairW = socket.socketpair()
    wake_reader.setblocking(False)
    client._thread = threading.current_thread()  # as under loop_start()
    try:
        for i in range(100):
            client._packet_queue(PUBACK, bytes([0x40, 2, 0, i]), i, 1)
        assert wake_reader.recv(1000) == b"0"
        assert client._packet_write() == paho.MQTT_ERR_SUCCESS
        assert wire.recv(1000) == b"".join(bytes([0x40, 2, 0, i]) for i in range(100))
        client._packet_queue(PUBACK, b"\x40\x02\x00\x64", 100, 1)
        assert wake_reader.recv(1000) == b"0"  # written since: the next packet wakes again
    finally:
        client._thread = None
        client._sockpairW.close()
        wake_reader.close()


def test_a_large_packet_is_not_copied_into_a_join(client: BufferedClient) -> None:
    large = bytes(WRITE_COALESCE_MAX)
    client._out_packet.extend([_queued(PUBACK, b"a1"), _queued(PUBLISH | 2, large),
                               _queued(PUBACK, b"a2"), _queued(PUBACK, b"a3")])  # fmt: skip
    client._coalesce_queued_packets()
    assert [p["packet"] for p in client._out_packet] == [b"a1", large, b"a2", b"a3"]
