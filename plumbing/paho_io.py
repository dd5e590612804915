"""A paho client that spends fewer system calls per MQTT packet.

paho reads every packet with two or three ``recv`` calls (the type byte, the length
bytes, then the body), writes every queued packet with its own ``send``, and wakes its
network thread with one more ``send`` for every packet another thread queues. At
thousands of QoS 1 messages per second (a PUBLISH and a PUBACK for each) those system
calls, each a trip through the interpreter and the kernel, cost more than the protocol.

:class:`BufferedClient` reads up to :data:`READ_SIZE` bytes at once and serves paho's
small reads from them, sends the packets that are waiting in one ``send``, and wakes the
network thread once per round of writing. It changes nothing of paho's protocol handling
but overrides some of paho's internal methods (the services connect over TCP or TLS,
whose sockets both have ``recv_into``), which is why ``pyproject.toml`` keeps paho below 3.
Measured with ``tests/bench/bridge_throughput.py``: a subscriber that only counts QoS 1
messages receives about twice as many per second as on paho's own client.

Opt-in, for a consumer that acks by hand (the bridge): with :attr:`on_publish_batch` set,
the complete QoS 1 PUBLISH packets waiting in the buffer are decoded in one tight loop
(topic, payload, message id, dup flag; MQTT 5 properties are skipped) and handed over as
one list per read, instead of one paho message object and callback each; every other
packet, and a PUBLISH not wholly in the buffer, still goes through paho. :meth:`ack_many`
queues the PUBACKs of many messages as one write.
"""

from __future__ import annotations

import contextlib
import ssl
import struct
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.client import DISCONNECT, PUBACK, PUBLISH
from paho.mqtt.enums import MQTTErrorCode

READ_SIZE = 65536
WRITE_COALESCE_MAX = 65536  # bytes joined into one send at most
WAKE_BYTE = b"0"
PUBLISH_QOS1 = PUBLISH | 0x02  # first byte of a QoS 1 PUBLISH, dup and retain bits masked
FIRST_BYTE_MASK = 0xF6  # packet type and QoS bits
# (topic, payload, message id, dup): one incoming QoS 1 PUBLISH, decoded in bulk.
Publish = tuple[str, bytes, int, bool]


class BufferedClient(paho.Client):
    """paho's client with buffered reads and coalesced writes (same API, same behaviour)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # One buffer for the client's life, so reading allocates only what paho keeps.
        self._read_buffer = bytearray(READ_SIZE)
        self._read_view = memoryview(self._read_buffer)
        self._read_position = self._read_end = 0
        self._fills_left = 1
        self._wake_pending = False
        self.on_publish_batch: Callable[[list[Publish]], None] | None = None

    def _sock_recv(self, bufsize: int) -> bytes:
        if self._read_position >= self._read_end:
            if not self._fills_left:
                raise BlockingIOError  # paho's loop writes (our PUBACKs) before reading on
            self._fills_left -= 1
            self._read_position, self._read_end = 0, self._fill()
            if self._read_end == 0:
                return b""  # the peer closed: paho sees a lost connection
        start = self._read_position
        end = min(start + bufsize, self._read_end)
        self._read_position = end
        return bytes(self._read_view[start:end])

    def _fill(self) -> int:
        """Read what waits into the buffer, with paho's handling of socket errors."""
        sock = self._sock
        if sock is None:
            raise ConnectionError("self._sock is None")
        try:
            return int(sock.recv_into(self._read_buffer))  # type: ignore[attr-defined]
        except ssl.SSLWantReadError as err:
            raise BlockingIOError from err
        except ssl.SSLWantWriteError as err:
            self._call_socket_register_write()
            raise BlockingIOError from err

    def _buffered(self) -> bool:
        return self._read_position < self._read_end

    def loop_read(self, max_packets: int = 1) -> MQTTErrorCode:
        # paho handles a few packets per readable socket; packets already in our buffer do
        # not make the socket readable again, so handle all of them. But read the socket
        # only once: a broker that keeps sending would otherwise starve our writes.
        self._fills_left = 1
        bulk = self.on_publish_batch is not None
        if bulk and not self._bulk_publishes():
            return paho.MQTT_ERR_SUCCESS  # nothing to read now
        rc = super().loop_read(max_packets)
        while rc == paho.MQTT_ERR_SUCCESS and self._buffered() and self._sock is not None:
            if bulk:
                self._bulk_publishes()
                if not self._buffered():
                    break
            rc = super().loop_read(max_packets)
        return rc

    def _bulk_publishes(self) -> bool:
        """Decode the whole QoS 1 PUBLISH packets at the buffer's start and hand them over.

        Fills the buffer first when it is empty (the read's one fill). False when the socket
        had nothing; errors and a closed socket are left for paho's own read to report.
        """
        if self._in_packet["command"] != 0 or self._sock is None:
            return True  # paho is in the middle of a packet: it reads on
        if not self._buffered():
            try:
                filled = self._fill()
            except BlockingIOError:
                return False
            except OSError:
                return True  # paho's read fails the same way and handles it
            if filled == 0:
                return True  # closed: paho's read sees it
            self._fills_left -= 1
            self._read_position, self._read_end = 0, filled
        batch = self._decode_publishes()
        if batch:
            with self._msgtime_mutex:
                self._last_bytes_received = paho.time_func()
            assert self.on_publish_batch is not None
            self.on_publish_batch(batch)
        return True

    def _decode_publishes(self) -> list[Publish]:
        buf, pos, end = self._read_buffer, self._read_position, self._read_end
        v5 = self._protocol == paho.MQTTv5
        batch: list[Publish] = []
        while pos < end and buf[pos] & FIRST_BYTE_MASK == PUBLISH_QOS1:
            length, start = _varint(buf, pos + 1, end)
            if length < 0 or start + length > end:
                break  # not wholly here yet: paho reads it
            stop = start + length
            tlen = (buf[start] << 8) | buf[start + 1] if length >= 4 else length
            at = start + 2 + tlen
            if at + 2 > stop:
                break  # malformed: paho reports it
            try:
                topic = buf[start + 2 : at].decode()
            except UnicodeDecodeError:
                break  # paho reports it
            mid = (buf[at] << 8) | buf[at + 1]
            at += 2
            if v5:
                plen, at = _varint(buf, at, stop)
                if plen < 0:
                    break
                at += plen
            batch.append((topic, bytes(buf[at:stop]), mid, bool(buf[pos] & 0x08)))
            pos = stop
        self._read_position = pos
        return batch

    def ack_many(self, mids: list[int]) -> None:
        """PUBACK every message id in ``mids``, queued as one write (manual acks)."""
        if mids:
            packet = b"".join([_PUBACK.pack(PUBACK, 2, mid) for mid in mids])
            self._packet_queue(PUBACK, packet, 0, 0)

    def _sock_close(self) -> None:
        self._read_position = self._read_end = 0  # bytes of the old connection
        super()._sock_close()

    def _packet_queue(
        self,
        command: int,
        packet: bytes | bytearray,
        mid: int,
        qos: int,
        info: paho.MQTTMessageInfo | None = None,
    ) -> MQTTErrorCode:
        if self._thread is None or self._sockpairW is None:
            return super()._packet_queue(command, packet, mid, qos, info)  # paho writes now
        self._out_packet.append(_queued(command, packet, mid, qos, info))
        # paho wakes its network thread with one system call per packet; one wake until
        # the thread writes is enough, as it then writes everything queued (appended
        # above, before the flag is looked at).
        if not self._wake_pending:
            self._wake_pending = True
            with contextlib.suppress(BlockingIOError):  # the wake-up pipe is full: awake
                self._sockpairW.send(WAKE_BYTE)
        self._call_socket_register_write()
        return paho.MQTT_ERR_SUCCESS

    def _packet_write(self) -> MQTTErrorCode:
        self._wake_pending = False  # from here on, what is queued gets written
        self._coalesce_queued_packets()
        return super()._packet_write()

    def _coalesce_queued_packets(self) -> None:
        """Join the leading queued packets that need nothing after their send into one.

        A QoS 0 PUBLISH (its on_publish fires once written) and a DISCONNECT (the socket
        closes after it) keep their own entry; so does a partly written packet. Other
        threads append to the queue meanwhile, so it is only peeked at and popped from.
        """
        queue = self._out_packet
        if len(queue) < 2 or queue[0]["pos"] != 0:
            return
        taken: list[Any] = []
        size = 0
        while queue:
            packet = queue[0]
            command = packet["command"] & 0xF0
            if command == DISCONNECT or (command == PUBLISH and packet["qos"] == 0):
                break
            size += len(packet["packet"])
            if taken and size > WRITE_COALESCE_MAX:
                break  # a large packet is not copied to be joined
            taken.append(queue.popleft())
        if len(taken) == 1:
            queue.appendleft(taken[0])
        elif taken:
            # Labelled a PUBACK: a packet paho only writes, with nothing to do after it.
            queue.appendleft(_queued(PUBACK, b"".join(p["packet"] for p in taken), 0, 1, None))


_PUBACK = struct.Struct("!BBH")


def _varint(buf: bytearray, at: int, end: int) -> tuple[int, int]:
    """MQTT's variable byte integer at ``at``: (value, index after it); (-1, at) when cut off
    by ``end`` or longer than four bytes."""
    value = shift = 0
    for index in range(at, min(end, at + 4)):
        byte = buf[index]
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, index + 1
        shift += 7
    return -1, at


def _queued(
    command: int, packet: bytes | bytearray, mid: int, qos: int, info: paho.MQTTMessageInfo | None
) -> Any:
    """An entry of paho's outgoing queue, as paho's own ``_packet_queue`` makes it."""
    return {"command": command, "mid": mid, "qos": qos, "pos": 0,
            "to_process": len(packet), "packet": packet, "info": info}  # fmt: skip
