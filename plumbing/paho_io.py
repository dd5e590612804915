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
"""

from __future__ import annotations

import contextlib
import ssl
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.client import DISCONNECT, PUBACK, PUBLISH
from paho.mqtt.enums import MQTTErrorCode

READ_SIZE = 65536
WRITE_COALESCE_MAX = 65536  # bytes joined into one send at most
WAKE_BYTE = b"0"


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
        rc = super().loop_read(max_packets)
        while rc == paho.MQTT_ERR_SUCCESS and self._buffered() and self._sock is not None:
            rc = super().loop_read(max_packets)
        return rc

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


def _queued(
    command: int, packet: bytes | bytearray, mid: int, qos: int, info: paho.MQTTMessageInfo | None
) -> Any:
    """An entry of paho's outgoing queue, as paho's own ``_packet_queue`` makes it."""
    return {"command": command, "mid": mid, "qos": qos, "pos": 0,
            "to_process": len(packet), "packet": packet, "info": info}  # fmt: skip
