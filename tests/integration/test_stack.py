"""The dev stack's brokers are real and carry traffic the way the services rely on."""

from __future__ import annotations

import datetime as dt
import ipaddress
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from confluent_kafka import Consumer, KafkaError, Producer
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from plumbing.kafka import consumer_config, producer_config
from plumbing.mqtt import MqttConnection
from plumbing.settings import KafkaSettings, MqttSettings
from tests.integration.harness import private_mosquitto, wait_for

pytestmark = pytest.mark.broker

COUNT = 1000


def test_mosquitto_delivers_every_qos1_message(mqtt_port: int, mqtt_prefix: str) -> None:
    settings = MqttSettings(port=mqtt_port)
    topic = f"{mqtt_prefix}/dev1/raw/payments"
    received: list[bytes] = []
    all_in = threading.Event()

    def on_message(msg: paho.MQTTMessage) -> None:
        received.append(msg.payload)
        if len(received) == COUNT:
            all_in.set()

    subscriber = MqttConnection(
        settings, f"sub-{mqtt_prefix}", subscriptions=[(topic, 1)], on_message=on_message
    )
    publisher = MqttConnection(settings, f"pub-{mqtt_prefix}")
    subscriber.start()
    publisher.start()
    try:
        infos = [publisher.client.publish(topic, f"{i}".encode(), qos=1) for i in range(COUNT)]
        for info in infos:
            info.wait_for_publish(10)
        assert all_in.wait(20), f"received {len(received)} of {COUNT}"
        assert sorted(int(p) for p in received) == list(range(COUNT))
    finally:
        publisher.stop()
        subscriber.stop()


def test_kafka_idempotent_acks_all_round_trip(kafka_bootstrap: str, kafka_topic) -> None:
    settings = KafkaSettings(bootstrap_servers=kafka_bootstrap)
    topic = kafka_topic("roundtrip")
    producer = Producer(producer_config(settings, "test-producer"))
    assert producer_config(settings, "x")["acks"] == "all"
    delivered: list[str] = []
    failed: list[KafkaError] = []

    def on_delivery(err: KafkaError | None, msg: object) -> None:
        if err is not None:
            failed.append(err)
        else:
            delivered.append(msg.value().decode())  # type: ignore[attr-defined]

    sent = [f"message-{i}" for i in range(COUNT)]
    for i, value in enumerate(sent):
        producer.produce(topic, value=value, key=f"dev{i % 7}", on_delivery=on_delivery)
        producer.poll(0)
    assert producer.flush(30) == 0
    assert failed == []
    assert sorted(delivered) == sorted(sent)

    consumer = Consumer(consumer_config(settings, f"g-{topic}", "test-consumer"))
    consumer.subscribe([topic])
    seen: list[str] = []
    deadline = time.monotonic() + 60
    try:
        while len(seen) < COUNT and time.monotonic() < deadline:
            for msg in consumer.consume(500, timeout=1.0):
                assert msg.error() is None, msg.error()
                seen.append(msg.value().decode())
        # Nothing more than what we sent arrives afterwards.
        extra = consumer.consume(100, timeout=2.0)
    finally:
        consumer.close()
    assert sorted(seen) == sorted(sent)
    assert [m for m in extra if m.error() is None] == []


# Around the one-byte/two-byte length boundaries and larger than one buffered read.
SIZES = [0, 1, 120, 127, 128, 300, 16_383, 16_384, 70_000, 300_000]


def _sized_payload(i: int) -> bytes:
    size = SIZES[i % len(SIZES)]
    return (f"{i}:".encode() + bytes(range(256)) * (size // 256 + 1))[:size] if size else b""


def test_buffered_client_carries_every_size_intact_and_in_order(
    mqtt_port: int, mqtt_prefix: str
) -> None:
    settings = MqttSettings(port=mqtt_port)
    topic = f"{mqtt_prefix}/dev1/raw/sizes"
    count = 3 * len(SIZES)
    received: list[bytes] = []
    acked: list[int] = []
    all_in = threading.Event()
    subscriber: MqttConnection

    def on_message(msg: paho.MQTTMessage) -> None:
        received.append(bytes(msg.payload))
        subscriber.client.ack(msg.mid, 1)  # PUBACKs the client joins into fewer writes
        if len(received) == count:
            all_in.set()

    subscriber = MqttConnection(settings, f"sub-{mqtt_prefix}", subscriptions=[(topic, 1)],
                                on_message=on_message, manual_ack=True)  # fmt: skip
    publisher = MqttConnection(settings, f"pub-{mqtt_prefix}",
                               on_publish=lambda mid, _refused: acked.append(mid))  # fmt: skip
    subscriber.start()
    publisher.start()
    try:
        infos = [publisher.client.publish(topic, _sized_payload(i), qos=1) for i in range(count)]
        qos0 = publisher.client.publish(f"{topic}/qos0", b"x", qos=0)  # its own write
        for info in infos:
            info.wait_for_publish(10)
        assert all_in.wait(30), f"received {len(received)} of {count}"
        assert received == [_sized_payload(i) for i in range(count)]
        qos0.wait_for_publish(10)  # written after the QoS 1 ones, maybe just now
        assert qos0.is_published()
        assert set(acked) >= {info.mid for info in infos}
    finally:
        publisher.stop()
        subscriber.stop()


def _subscriber_with_backlog(
    settings: MqttSettings,
    name: str,
    topic: str,
    payloads: list[bytes],
    on_message: Callable[[paho.MQTTMessage], None],
) -> MqttConnection:
    """A manual-ack subscriber whose persistent session holds ``payloads`` in the broker;
    not started (start it to receive the backlog)."""
    subscriber = MqttConnection(settings, f"sub-{name}", subscriptions=[(topic, 1)],
                                on_message=on_message, manual_ack=True)  # fmt: skip
    subscriber.start()
    subscriber.stop()  # the session stays: the backlog waits in the broker
    publisher = MqttConnection(settings, f"pub-{name}")
    publisher.start()
    publisher.publish_all((topic, payload) for payload in payloads)
    publisher.stop()
    return subscriber


def test_a_dropped_connection_mid_backlog_loses_and_corrupts_nothing(
    mqtt_port: int, mqtt_prefix: str
) -> None:
    """The broker redelivers what was not acked; nothing arrives twice garbled or not at all."""
    settings = MqttSettings(port=mqtt_port, reconnect_min_s=1, reconnect_max_s=1)
    topic = f"{mqtt_prefix}/dev1/raw/drop"
    sent = {f"{i}".encode() * 50 for i in range(5000)}
    received: list[bytes] = []
    dropped_on: list[int] = []  # the connection (generation) that was cut
    subscriber: MqttConnection

    def on_message(msg: paho.MQTTMessage) -> None:
        received.append(bytes(msg.payload))
        if len(received) == 1000:  # mid-backlog, with more bytes waiting in the buffer
            dropped_on.append(subscriber.generation)
            sock = subscriber.client.socket()
            assert isinstance(sock, socket.socket)
            sock.shutdown(socket.SHUT_RDWR)
        subscriber.client.ack(msg.mid, 1)

    subscriber = _subscriber_with_backlog(settings, mqtt_prefix, topic, sorted(sent), on_message)
    subscriber.start()
    try:
        wait_for(lambda: sent <= set(received), 60, "every message after the reconnect")
        assert set(received) == sent  # all arrived, and nothing garbled arrived
        assert subscriber.generation > dropped_on[0]  # it did reconnect
    finally:
        subscriber.stop()


def _tls_files(directory: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1: (ca, cert, key) PEM files."""
    now = dt.datetime.now(dt.UTC)

    def certificate(subject: str, key: ec.EllipticCurvePrivateKey,
                    issuer: tuple[str, ec.EllipticCurvePrivateKey] | None) -> bytes:  # fmt: skip
        issuer_name, signer = issuer or (subject, key)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer_name)]))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
        )
        if issuer is None:
            builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        else:
            san = [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            builder = builder.add_extension(x509.SubjectAlternativeName(san), False)
        return builder.sign(signer, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    server_key = ec.generate_private_key(ec.SECP256R1())
    paths = directory / "ca.pem", directory / "server.pem", directory / "server.key"
    paths[0].write_bytes(certificate("edgewatch test CA", ca_key, None))
    paths[1].write_bytes(certificate("127.0.0.1", server_key, ("edgewatch test CA", ca_key)))
    paths[2].write_bytes(
        server_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return paths


def test_tls_connection_carries_a_backlog_and_every_size(tmp_path: Path, mqtt_prefix: str) -> None:
    """Over TLS the buffered client reads TLS records, not the raw socket."""
    ca, cert, key = _tls_files(tmp_path)
    tls = f"cafile {ca}\ncertfile {cert}\nkeyfile {key}\n"
    port, broker = private_mosquitto(tmp_path, tls + "max_queued_messages 10000\n")
    settings = MqttSettings(port=port, tls_ca_file=ca)
    topic = f"{mqtt_prefix}/dev1/raw/tls"
    sent = [_sized_payload(i) for i in range(2 * len(SIZES))] + [b"%d" % i for i in range(3000)]
    received: list[bytes] = []
    subscriber: MqttConnection

    def on_message(msg: paho.MQTTMessage) -> None:
        received.append(bytes(msg.payload))
        subscriber.client.ack(msg.mid, 1)

    try:
        subscriber = _subscriber_with_backlog(settings, mqtt_prefix, topic, sent, on_message)
        subscriber.start()
        try:
            wait_for(lambda: len(received) >= len(sent), 60, "the whole backlog over TLS")
            assert received == sent
        finally:
            subscriber.stop()
    finally:
        broker.kill()
        broker.wait()
