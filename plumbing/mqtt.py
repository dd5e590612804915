"""One way to build an MQTT client: MQTT 5, persistent session, QoS 1, manual acks.

Callbacks given here run on paho's network thread; they must only hand work off.
Subscriptions are made in ``on_connect`` so that every reconnect restores them.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, TypeVar

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from plumbing.errors import EdgewatchError
from plumbing.paho_io import BufferedClient
from plumbing.settings import MqttSettings

log = logging.getLogger(__name__)

QOS_AT_LEAST_ONCE = 1
REFUSALS_KEPT = 1024
SERVER_RECEIVE_MAXIMUM_DEFAULT = 65535  # MQTT v5: absent means 65,535
T = TypeVar("T")


def paced(items: Iterable[T], rate: float | None) -> Iterator[T]:
    """``items`` released at ``rate`` per second (None: as fast as possible).

    Each item is taken from ``items`` only when its time has come, so a generator that
    stamps the current time into its payloads stamps the real sending time.
    """
    iterator = iter(items)
    started = time.perf_counter()
    sent = 0
    while True:
        if rate:
            delay = started + sent / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
        try:
            item = next(iterator)
        except StopIteration:
            return
        yield item
        sent += 1


class MqttError(EdgewatchError):
    """The broker refused us, or a publish could not be queued."""


class MqttConnection:
    """A connected paho client with resubscription, a retained status and a last will.

    ``subscriptions`` are (filter, qos) pairs made on every (re)connect. ``on_message``
    gets paho's message; with ``manual_ack`` the caller acks through :meth:`ack`.
    ``generation`` counts connections: message ids of an older generation are stale.
    ``on_publish`` gets each PUBACK's message id and, when the broker refused the message
    (a failure reason code such as quota exceeded or not authorized), the reason's name.
    ``client_class`` is paho's client with fewer system calls per packet, unless a
    benchmark asks for paho's own.
    """

    def __init__(
        self,
        settings: MqttSettings,
        client_id: str,
        *,
        subscriptions: Sequence[tuple[str, int]] = (),
        on_message: Callable[[paho.MQTTMessage], None] | None = None,
        manual_ack: bool = False,
        will: tuple[str, bytes] | None = None,
        max_inflight: int = 1000,
        on_publish: Callable[[int, str | None], None] | None = None,
        client_class: type[paho.Client] = BufferedClient,
    ) -> None:
        self.settings = settings
        self.subscriptions = list(subscriptions)
        self.generation = 0
        self.connected = threading.Event()
        self._on_message = on_message
        self._on_publish = on_publish
        # How many QoS 1 publishes the broker accepts unacknowledged (CONNACK); paho does
        # not enforce it, so a caller that publishes with max_inflight=0 bounds itself.
        self.server_receive_maximum = SERVER_RECEIVE_MAXIMUM_DEFAULT
        self._refused: dict[int, str] = {}  # recent refusals, for publish_and_wait
        self._connect_listeners: list[Callable[[], None]] = []
        client = client_class(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=MQTTProtocolVersion.MQTTv5,
            manual_ack=manual_ack,
        )
        if settings.username is not None:
            password = settings.password.get_secret_value() if settings.password else None
            client.username_pw_set(settings.username, password)
        if settings.tls_ca_file is not None:
            client.tls_set(
                ca_certs=str(settings.tls_ca_file),
                certfile=str(settings.tls_cert_file) if settings.tls_cert_file else None,
                keyfile=str(settings.tls_key_file) if settings.tls_key_file else None,
            )
        if will is not None:
            client.will_set(will[0], will[1], qos=QOS_AT_LEAST_ONCE, retain=True)
        client.reconnect_delay_set(
            min_delay=max(1, int(settings.reconnect_min_s)),
            max_delay=max(1, int(settings.reconnect_max_s)),
        )
        client.max_inflight_messages_set(max_inflight)
        client.on_connect = self._handle_connect
        client.on_disconnect = self._handle_disconnect
        client.on_message = self._handle_message
        client.on_publish = self._handle_publish
        self.client = client

    def add_connect_listener(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` on the network thread after each successful (re)connect."""
        self._connect_listeners.append(listener)

    def start(self, timeout_s: float = 30.0) -> None:
        """Connect (persistent session) and start the network thread; wait for CONNACK."""
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        properties.SessionExpiryInterval = self.settings.session_expiry_s
        properties.ReceiveMaximum = self.settings.receive_maximum
        self.client.connect_async(
            self.settings.host,
            self.settings.port,
            keepalive=self.settings.keepalive_s,
            clean_start=False,
            properties=properties,
        )
        self.client.loop_start()
        if not self.connected.wait(timeout_s):
            self.client.loop_stop()
            raise MqttError(
                f"no connection to MQTT broker {self.settings.host}:{self.settings.port} "
                f"within {timeout_s:.0f}s"
            )

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> int:
        """Queue a QoS 1 publish; returns its message id (acked later via on_publish)."""
        info = self.client.publish(topic, payload, qos=QOS_AT_LEAST_ONCE, retain=retain)
        if info.rc not in (paho.MQTT_ERR_SUCCESS, paho.MQTT_ERR_NO_CONN):
            # NO_CONN is fine: paho keeps QoS 1 messages and sends them after reconnecting.
            raise MqttError(f"publish to {topic} failed: {paho.error_string(info.rc)}")
        return int(info.mid)

    def publish_all(
        self,
        items: Iterable[tuple[str, bytes]],
        rate: float | None = None,
        *,
        window: int = 5000,
        timeout_s: float = 60.0,
    ) -> int:
        """QoS 1 publishes (paced if ``rate``); at most ``window`` await their PUBACK.

        The window slides: only the oldest publish is waited for, so a paced sender never
        stops for a whole window and then bursts to catch up.
        """
        pending: deque[paho.MQTTMessageInfo] = deque()
        count = 0
        for topic, payload in paced(items, rate):
            pending.append(self.client.publish(topic, payload, qos=QOS_AT_LEAST_ONCE))
            count += 1
            while pending and (len(pending) >= window or pending[0].is_published()):
                pending.popleft().wait_for_publish(timeout_s)
        for info in pending:
            info.wait_for_publish(timeout_s)
        return count

    def publish_and_wait(
        self, topic: str, payload: bytes, *, retain: bool = False, timeout_s: float = 10.0
    ) -> None:
        """Publish with QoS 1 and block until the broker acknowledged it."""
        info = self.client.publish(topic, payload, qos=QOS_AT_LEAST_ONCE, retain=retain)
        info.wait_for_publish(timeout_s)
        if not info.is_published():
            raise MqttError(f"broker did not acknowledge {topic} within {timeout_s}s")
        refused = self._refused.pop(info.mid, None)
        if refused is not None:
            raise MqttError(f"broker refused the publish to {topic}: {refused}")

    def publish_last_status(self, topic: str, payload: bytes) -> None:
        """The retained status at shutdown, best effort: the last will covers a failure."""
        try:
            self.publish_and_wait(topic, payload, retain=True, timeout_s=2.0)
        except (MqttError, RuntimeError, ValueError) as exc:  # paho raises the latter two
            log.warning("final status not confirmed: %s", exc)

    def ack(self, mid: int, generation: int) -> bool:
        """Acknowledge an incoming QoS 1 message, unless it came on an older connection.

        After a reconnect the broker redelivers what we had not acked, so acking a stale
        id could acknowledge a different message: such acks are skipped.
        """
        if generation != self.generation:
            return False
        self.client.ack(mid, QOS_AT_LEAST_ONCE)
        return True

    def ack_many(self, mids: list[int], generation: int) -> bool:
        """:meth:`ack` for many messages of one connection, as one write where the client
        can (:class:`BufferedClient`)."""
        if generation != self.generation:
            return False
        client = self.client
        if isinstance(client, BufferedClient):
            client.ack_many(mids)
        else:
            for mid in mids:
                client.ack(mid, QOS_AT_LEAST_ONCE)
        return True

    def _handle_connect(
        self,
        client: paho.Client,
        _userdata: Any,
        _flags: Any,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason_code.is_failure:
            log.error("MQTT broker refused the connection: %s", reason_code)
            return
        self.generation += 1
        self.server_receive_maximum = int(
            getattr(properties, "ReceiveMaximum", SERVER_RECEIVE_MAXIMUM_DEFAULT)
        )
        sock = client.socket()
        if isinstance(sock, socket.socket) and sock.family in (socket.AF_INET, socket.AF_INET6):
            # paho leaves Nagle on: a PUBACK followed by a small PUBLISH would then wait for
            # the peer's delayed ACK (~40 ms). Send small packets at once.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.subscriptions:
            result, _mid = client.subscribe(list(self.subscriptions))
            if result != paho.MQTT_ERR_SUCCESS:
                log.error("subscribe failed: %s", paho.error_string(result))
        for listener in self._connect_listeners:
            listener()
        log.info("MQTT connected to %s:%d", self.settings.host, self.settings.port)
        self.connected.set()

    def _handle_disconnect(
        self,
        _client: paho.Client,
        _userdata: Any,
        _flags: Any,
        reason_code: ReasonCode,
        _properties: Properties | None,
    ) -> None:
        self.connected.clear()
        if reason_code.is_failure:
            log.warning("MQTT disconnected: %s; paho reconnects", reason_code)

    def _handle_message(self, _client: paho.Client, _userdata: Any, msg: paho.MQTTMessage) -> None:
        if self._on_message is not None:
            self._on_message(msg)

    def _handle_publish(
        self,
        _client: paho.Client,
        _userdata: Any,
        mid: int,
        reason_code: ReasonCode,
        _properties: Properties,
    ) -> None:
        refused = reason_code.getName() if reason_code.is_failure else None
        if refused is not None:
            log.warning("broker refused message %d: %s", mid, refused)
            if len(self._refused) >= REFUSALS_KEPT:
                self._refused.pop(next(iter(self._refused)))
            self._refused[mid] = refused
        if self._on_publish is not None:
            self._on_publish(mid, refused)
