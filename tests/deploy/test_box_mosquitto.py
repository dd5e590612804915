"""The shipped Mosquitto config, ACL and ``install.sh add-device`` against a real broker.

Finding 1 (issue 13): on Debian the shipped conf.d file repeated ``persistence_location``
and Mosquitto refused to start. Finding 5: there was no way to give a device a login.
Then the identities: a device publishes its own raw events only, never another device's,
never scored events, alerts or models; the agent cannot publish models.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.deploy.box import NOT_AUTHORIZED, DebianMosquitto, Device

pytestmark = pytest.mark.broker


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[DebianMosquitto]:
    instance = DebianMosquitto(tmp_path).start()
    yield instance
    instance.stop()


@pytest.fixture
def bridge_view(broker: DebianMosquitto) -> Iterator[Device]:
    """The bridge's login, reading everything edgewatch publishes (its ACL allows it)."""
    broker.add_user("edgewatch-bridge", "bridge-secret")
    observer = Device(broker.port, "edgewatch-bridge", "bridge-secret").connect()
    observer.subscribe("edge/#")
    yield observer
    observer.close()


def _arrived(observer: Device, topic: str, wait_s: float = 0.5) -> bool:
    time.sleep(wait_s)
    return any(t == topic for t, _ in observer.received)


def test_shipped_conf_starts_under_debians_main_config(tmp_path: Path) -> None:
    broker = DebianMosquitto(tmp_path).start()
    try:
        assert broker.proc is not None
        assert broker.proc.poll() is None
    finally:
        broker.stop()


def test_a_repeated_persistence_setting_is_what_debian_refuses(tmp_path: Path) -> None:
    """The check above would catch the original file: Debian's main config plus it fails."""
    shipped = (Path(__file__).parents[2] / "deploy/mosquitto/edgewatch.conf").read_text()
    broker = DebianMosquitto(tmp_path, shipped + "persistence_location /var/lib/mosquitto/\n")
    with pytest.raises(RuntimeError, match="Duplicate persistence_location"):
        broker.start()


def test_add_device_creates_a_login_that_publishes_its_own_raw_events(
    broker: DebianMosquitto, bridge_view: Device
) -> None:
    password = broker.add_device("till-7")
    assert len(password) >= 24
    device = Device(broker.port, "till-7", password).connect()
    try:
        assert device.publish("edge/till-7/raw/payments", b'{"amount": 1}') == 0
        assert _arrived(bridge_view, "edge/till-7/raw/payments")
    finally:
        device.close()
    with pytest.raises(ConnectionRefusedError):
        Device(broker.port, "till-7", "wrong-password").connect()


def test_add_device_refuses_reserved_and_malformed_names(broker: DebianMosquitto) -> None:
    import subprocess

    for name in ("edgewatch-agent", "models", "a/b", "+", "#"):
        with pytest.raises(subprocess.CalledProcessError):
            broker.add_device(name)


def test_device_cannot_publish_as_another_device(
    broker: DebianMosquitto, bridge_view: Device
) -> None:
    password = broker.add_device("dev-a")
    broker.add_device("dev-b")
    device = Device(broker.port, "dev-a", password).connect()
    try:
        assert device.publish("edge/dev-b/raw/payments") == NOT_AUTHORIZED
        assert not _arrived(bridge_view, "edge/dev-b/raw/payments")
    finally:
        device.close()


@pytest.mark.parametrize(
    "topic",
    [
        "edge/dev-a/scored/payments",
        "edge/dev-a/alerts/payments",
        "edge/dev-a/deadletter/payments",
        "edge/dev-a/status/agent",
        "edge/dev-a/rollout/payments",
        "edge/models/payments-fraud",
    ],
)
def test_devices_cannot_publish_scored_events_alerts_or_models(
    broker: DebianMosquitto, bridge_view: Device, topic: str
) -> None:
    password = broker.add_device("dev-a")
    broker.add_user("edgewatch-agent", "agent-secret")
    agent = Device(broker.port, "edgewatch-agent", "agent-secret").connect()
    agent.subscribe("edge/models/#")
    device = Device(broker.port, "dev-a", password).connect()
    try:
        assert device.publish(topic) == NOT_AUTHORIZED
        assert not _arrived(bridge_view, topic)
        assert not agent.received
    finally:
        device.close()
        agent.close()


def test_agent_cannot_publish_models_but_publishes_scored_events(
    broker: DebianMosquitto, bridge_view: Device
) -> None:
    broker.add_user("edgewatch-agent", "agent-secret")
    agent = Device(broker.port, "edgewatch-agent", "agent-secret").connect()
    agent.subscribe("edge/models/#")
    try:
        assert agent.publish("edge/models/payments-fraud", b"bundle") == NOT_AUTHORIZED
        assert agent.publish("edge/dev-a/scored/payments") == 0
        assert _arrived(bridge_view, "edge/dev-a/scored/payments")
        assert agent.publish("edge/box-1/rollout/payments") == 0  # transitions reach the bridge
        assert _arrived(bridge_view, "edge/box-1/rollout/payments")
        assert not [t for t, _ in agent.received if t.startswith("edge/models/")]
    finally:
        agent.close()
