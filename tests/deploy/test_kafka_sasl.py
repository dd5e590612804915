"""The bridge's production Kafka shape (SASL_SSL, SCRAM-SHA-512, CA file, password from the
credentials directory) against a real broker with the StandardAuthorizer and a box's ACLs.

The broker is ``deploy/dev/kafka_sasl.py``'s: a throwaway CA, SCRAM credentials written at
format time, ACLs letting the box's principal write ``edge.*`` and read ``edge.models`` only.
The tests act as the centre over the PLAINTEXT listener (a super user there).
"""

from __future__ import annotations

import contextlib
import json
import re
import secrets
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer

from bridge.settings import BridgeSettings
from models.central.jobs import Jobs
from models.central.settings import CentralSettings
from plumbing.settings import KafkaSettings
from tests.integration.harness import (
    Collector,
    ServiceProcess,
    consume,
    publish_all,
    scrape,
    wait_for,
)

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "deploy" / "dev"))
import kafka_sasl  # noqa: E402

pytestmark = [pytest.mark.broker, pytest.mark.slow]

DENIED_TOPIC = "central.raw.payments"
SENSOR_CHANNELS = ["Accelerometer1RMS", "Accelerometer2RMS", "Current", "Pressure",
                   "Temperature", "Thermocouple", "Voltage", "Volume Flow RateRMS"]  # fmt: skip


@pytest.fixture(scope="module")
def secure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[kafka_sasl.SecureStack]:
    stack = kafka_sasl.SecureStack(tmp_path_factory.mktemp("secure-stack"))
    stack.up()
    centre = stack.state.kafka_bootstrap
    kafka_sasl.create_topics(centre, [*kafka_sasl.EDGE_TOPICS, DENIED_TOPIC, "train.payments"])
    kafka_sasl.grant_box(centre)
    yield stack
    stack.destroy()


def _box_kafka(secure: kafka_sasl.SecureStack, password: str | None = None) -> KafkaSettings:
    return KafkaSettings(
        **secure.box_kafka_settings(), sasl_password=password or secure.box_password
    )


def _produce(config: dict, topic: str) -> str:
    result: list[str] = []
    producer = Producer({**config, "message.timeout.ms": 15000, "enable.idempotence": True})
    producer.produce(topic, b"{}", on_delivery=lambda e, _m: result.append(e.name() if e else "ok"))
    producer.flush(30)
    return result[0] if result else "no delivery report"


def _read_error(config: dict, topic: str) -> str | None:
    consumer = Consumer({**config, "group.id": f"edgewatch-bridge-check-{uuid.uuid4().hex[:6]}",
                         "auto.offset.reset": "earliest"})  # fmt: skip
    consumer.subscribe([topic])
    deadline = time.monotonic() + 10
    try:
        while time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is not None and message.error() is not None:
                return str(message.error().name())
        return None
    finally:
        consumer.close()


def test_box_principal_writes_edge_topics_only(secure: kafka_sasl.SecureStack) -> None:
    config = _box_kafka(secure).librdkafka_config()
    assert config["security.protocol"] == "SASL_SSL"
    assert _produce(config, "edge.raw.payments") == "ok"
    assert _produce(config, "train.payments") == "TOPIC_AUTHORIZATION_FAILED"
    assert _produce(config, DENIED_TOPIC) == "TOPIC_AUTHORIZATION_FAILED"


def test_box_principal_reads_edge_models_only(secure: kafka_sasl.SecureStack) -> None:
    config = _box_kafka(secure).librdkafka_config()
    assert _read_error(config, "edge.models") is None
    assert _read_error(config, "edge.raw.payments") == "TOPIC_AUTHORIZATION_FAILED"


def test_a_wrong_password_is_refused(secure: kafka_sasl.SecureStack) -> None:
    errors: list[str] = []
    config = {**_box_kafka(secure, "not-the-password").librdkafka_config(),
              "error_cb": lambda e: errors.append(e.name())}  # fmt: skip
    assert _produce(config, "edge.raw.payments") == "_MSG_TIMED_OUT"
    assert "_AUTHENTICATION" in errors


def _shipped_bridge_config(
    tmp_path: Path, secure: kafka_sasl.SecureStack, prefix: str, routes: str = ""
) -> Path:
    """deploy/config/bridge.toml with only the addresses and paths of this test changed."""
    text = (REPO / "deploy" / "config" / "bridge.toml").read_text()
    text = re.sub(
        r'bootstrap_servers = ".*"', f'bootstrap_servers = "{secure.sasl_bootstrap}"', text
    )
    text = text.replace("/etc/edgewatch/kafka-ca.pem", str(secure.tls.ca))
    text = text.replace("/var/lib/edgewatch/bridge/spool.db", str(tmp_path / "spool.db"))
    text = text.replace('username = "edgewatch-bridge"', f'topic_prefix = "{prefix}"')
    text = text.replace("port = 1883", f"port = {secure.state.mqtt_port}")
    text = re.sub(r"metrics_port = \d+", f"metrics_port = {_free_port()}", text)
    text = f'node_id = "box-{prefix}"\n' + text + routes
    path = tmp_path / "bridge.toml"
    path.write_text(text)
    return path


def _free_port() -> int:
    return int(kafka_sasl._stack_module().free_port())


def _start(
    config: Path, tmp_path: Path, secure: kafka_sasl.SecureStack, monkeypatch: pytest.MonkeyPatch
) -> ServiceProcess:
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "kafka__sasl_password").write_text(secure.box_password + "\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials))
    settings = BridgeSettings.load(config)
    assert settings.kafka.security_protocol == "SASL_SSL"
    assert settings.kafka.sasl_mechanism == "SCRAM-SHA-512"
    assert secure.box_password not in config.read_text()
    return ServiceProcess("bridge.cli", config, tmp_path / "bridge.log").start()


def _metrics_port(config: Path) -> int:
    match = re.search(r"metrics_port = (\d+)", config.read_text())
    assert match is not None
    return int(match.group(1))


@contextlib.contextmanager
def _bridge_fed(
    secure: kafka_sasl.SecureStack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    count: int, routes: str = "",
) -> Iterator[tuple[Path, list[str], ServiceProcess]]:  # fmt: skip
    """A bridge with the shipped config running, and ``count`` raw events published to it."""
    prefix = f"box{uuid.uuid4().hex[:6]}"
    config = _shipped_bridge_config(tmp_path, secure, prefix, routes)
    with Collector(secure.state.mqtt_port, [f"{prefix}/+/status/+"]) as status:
        bridge = _start(config, tmp_path, secure, monkeypatch)

        def online() -> bool:  # published once its subscriptions exist
            documents = status.documents("status")
            return any(d.get("service") == "bridge" and d.get("state") == "online"
                       for d in documents)  # fmt: skip

        wait_for(lambda: online() or not bridge.alive(), 60, "the bridge's online status")
    try:
        assert bridge.alive(), bridge.log_text()
        wait_for(lambda: _online(config), 30, "bridge metrics")
        ids = [f"{prefix}-{i}" for i in range(count)]
        publish_all(secure.state.mqtt_port, [
            (f"{prefix}/till-1/raw/payments", json.dumps({"event_id": e}).encode()) for e in ids
        ])  # fmt: skip
        yield config, ids, bridge
    finally:
        bridge.stop()


def test_bridge_with_the_production_config_forwards_over_sasl_ssl(
    secure: kafka_sasl.SecureStack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with _bridge_fed(secure, tmp_path, monkeypatch, 100) as (_config, ids, bridge):
        records = consume(secure.state.kafka_bootstrap, ["edge.raw.payments"],
                          until=lambda r: _ids(r) >= set(ids), timeout_s=180)  # fmt: skip
        assert _ids(records) >= set(ids)
    assert "_AUTHENTICATION" not in bridge.log_text()


def test_a_denied_write_is_dead_lettered_and_counted_never_lost(
    secure: kafka_sasl.SecureStack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    routes = (f'\n[[routes]]\nfilter = "+/raw/+"\nkind = "raw"\ntopic = "{DENIED_TOPIC}"\n'
              "json_event = false\n")  # fmt: skip
    with _bridge_fed(secure, tmp_path, monkeypatch, 50, routes) as (config, ids, _bridge):

        def dead(records: list) -> dict[str, str]:
            documents = (json.loads(r.value()) for r in records)
            return {d["event_id"]: d["reason"] for d in documents if d.get("event_id") in ids}

        records = consume(secure.state.kafka_bootstrap, ["edge.deadletter"],
                          until=lambda r: len(dead(r)) == len(ids), timeout_s=180)  # fmt: skip
        assert set(dead(records)) == set(ids)
        assert set(dead(records).values()) == {"kafka_topic_authorization_failed"}
        reason = 'reason="kafka_topic_authorization_failed"'

        def counted() -> float:
            samples = scrape(_metrics_port(config))
            return sum(v for k, v in samples.items() if "deadletters_total" in k and reason in k)

        wait_for(lambda: counted() >= len(ids), 10, "the dead-letter counter")
        assert counted() == len(ids)


def _online(config: Path) -> bool:
    try:
        scrape(_metrics_port(config))
    except OSError:
        return False
    return True


def _ids(records: list) -> set[str]:
    return {json.loads(r.value()).get("event_id") for r in records}


@pytest.mark.central
def test_central_jobs_run_over_sasl_ssl_as_their_own_principal(
    secure: kafka_sasl.SecureStack, central_stack: Any, tmp_path: Path
) -> None:
    """preprocess_sensors on the engine, reading and writing (in transactions) through the
    SASL_SSL listener with the centre's SCRAM login and ACLs (``grant_central``)."""
    centre = secure.state.kafka_bootstrap
    kafka_sasl.create_topics(centre, ["train.sensors"])
    password = secrets.token_urlsafe(12) + "'\""  # quotes survive SQL and JAAS quoting
    kafka_sasl.grant_central(centre, password)
    settings = CentralSettings(
        kafka={**secure.box_kafka_settings(), "sasl_username": kafka_sasl.CENTRAL_USER,
               "sasl_password": password},
        central={"sql_gateway": central_stack.state.sql_gateway,
                 "flink_rest": central_stack.state.flink_rest,
                 "checkpoint_dir": tmp_path / "checkpoints", "checkpoint_interval": "2 s"},
    )  # fmt: skip
    assert settings.kafka.bootstrap_servers == secure.sasl_bootstrap
    producer = Producer({"bootstrap.servers": centre})
    for i in range(3):
        reading = {"event_id": f"s{i}", "ts": 1_796_000_000.0 + i,
                   **{name: float(i) for name in SENSOR_CHANNELS}}  # fmt: skip
        headers = [("mqtt_topic", b"edge/pump-7/raw/sensors"), ("node_id", b"box-1"),
                   ("event_id", f"s{i}".encode())]  # fmt: skip
        producer.produce("edge.raw.sensors", key=b"pump-7", value=json.dumps(reading).encode(),
                         headers=headers)  # fmt: skip
    assert producer.flush(30) == 0

    jobs = Jobs(settings)
    jobs.submit("preprocess_sensors", resume=False)
    try:
        records = consume(centre, ["train.sensors"], until=lambda r: len(_ids(r)) >= 3,
                          timeout_s=180)  # fmt: skip
    finally:
        run = jobs.status(["preprocess_sensors"])["preprocess_sensors"]
        failure = run and jobs.last_failure(run.job_id)  # e.g. a refused login, for the report
        jobs.down(["preprocess_sensors"])
    assert _ids(records) == {"s0", "s1", "s2"}, f"job's last failure: {failure}"
