"""The dev stack's brokers are real and carry traffic the way the services rely on."""

from __future__ import annotations

import threading
import time

import paho.mqtt.client as paho
import pytest
from confluent_kafka import Consumer, KafkaError, Producer

from plumbing.kafka import consumer_config, producer_config
from plumbing.mqtt import MqttConnection
from plumbing.settings import KafkaSettings, MqttSettings

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
