"""``deploy/install.sh --with-mosquitto --trusted-key`` on a booted Debian 12, checked from outside.

One container per run (``deploy/dev/nspawn.py``): systemd is PID 1, the repository is copied
in, and the install runs as an operator would. The tests follow the operator's path:

1. first install with the shipped ``bridge.toml``: the script stops before enabling anything
   and names both what is missing (the Kafka password, the CA file: findings 2 and 3);
2. with both in place the same config validates (the password reaches the check only
   through LoadCredential) and both units come up (Type=notify READY);
3. the running box: hardening figures, secrets only via LoadCredential, the sandbox,
   restarts after kill -9 and after a hang (watchdog), events from a device added with
   ``install.sh add-device`` through the agent and the bridge into the dev stack's Kafka
   outside the container (production-signed bundles, production key trusted);
4. ``install.sh`` again upgrades, keeping configs, credentials, device logins and the spool.

The tests of this module run in file order and share the box. Needs root and
systemd-nspawn; the Debian root is cached in ``$EDGEWATCH_CACHE`` (``make test-deploy``).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from agent.replay import messages_from_file
from tests.deploy.box import Device
from tests.integration.harness import consume, wait_for

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "deploy" / "dev"))
import nspawn  # noqa: E402

pytestmark = [pytest.mark.deploy, pytest.mark.broker, pytest.mark.slow]

SECURITY_MAX = 2.5
SAMPLE = REPO / "models" / "samples" / "payments-holdout.csv"
SRC = "/root/edgewatch"
PROD = "/root/production"
PROD_2 = "/root/production-2"  # the key the rotation moves to
KEY_NAME = {PROD: "production", PROD_2: "production-2"}
INSTALL = ["nice", "-n", "10", "bash", f"{SRC}/deploy/install.sh", "--with-mosquitto",
           "--ca-bundle", nspawn.CONTAINER_CA]  # fmt: skip
SECRETS = ["agent-mqtt-password", "bridge-mqtt-password", "bridge-kafka-password"]


@dataclass
class Box:
    container: nspawn.Container
    kafka_bootstrap: str
    stack: object
    timings: dict[str, float] = field(default_factory=dict)
    device_password: str = ""

    def install(
        self, label: str, keys: tuple[str, ...] = (PROD,), bundles: str = PROD
    ) -> subprocess.CompletedProcess[str]:
        """install.sh trusting the public key of each of ``keys``, with ``bundles``' bundles."""
        env = {k: v for k, v in os.environ.items()
               if k.startswith("PIP_") and k not in ("PIP_CERT", "PIP_FIND_LINKS")}  # fmt: skip
        trust = [a for key in keys for a in ("--trusted-key", f"{key}/{KEY_NAME[key]}.pub.pem")]
        command = [*INSTALL, *trust, "--bundles", f"{bundles}/bundles"]
        started = time.monotonic()
        done = self.container.run(command, check=False, env=env, timeout_s=900)
        self.timings[label] = round(time.monotonic() - started, 1)
        return done

    def sh(self, script: str, check: bool = True) -> str:
        return self.container.sh(script, check=check).stdout.strip()

    def show(self, unit: str, prop: str) -> str:
        return self.sh(f"systemctl show -P {prop} {unit}")

    def main_pid(self, service: str) -> int:
        return int(self.show(f"edgewatch-{service}.service", "MainPID"))

    def wait_active_with_new_pid(self, service: str, old: int, timeout_s: float) -> int:
        def replaced() -> bool:
            state = self.show(f"edgewatch-{service}.service", "ActiveState")
            return state == "active" and self.main_pid(service) not in (0, old)

        wait_for(replaced, timeout_s, f"edgewatch-{service} restarted by systemd")
        return self.main_pid(service)

    def as_service(self, service: str, script: str) -> subprocess.CompletedProcess[str]:
        """Run ``script`` in the service's namespaces, as its user (what the service could do)."""
        pid = self.main_pid(service)
        uid, gid = self.sh("id -u edgewatch"), self.sh("id -g edgewatch")
        command = ["nsenter", "-t", str(pid), "-a", "-S", uid, "-G", gid, "/bin/sh", "-c", script]
        return self.container.run(command, check=False)

    def digest(self, paths: list[str]) -> dict[str, str]:
        out = {}
        for inside in paths:
            host = self.container.path(inside)
            out[inside] = hashlib.sha256(host.read_bytes()).hexdigest()
        return out


def _bridge_config(bootstrap: str) -> str:
    """The shipped bridge.toml with the dev stack's (PLAINTEXT, loopback) Kafka instead."""
    shipped = (REPO / "deploy" / "config" / "bridge.toml").read_text()
    kafka = re.search(r"\[kafka\]\n(?:[^\[].*\n|\n)*", shipped)
    assert kafka is not None
    return shipped.replace(kafka.group(0), f'[kafka]\nbootstrap_servers = "{bootstrap}"\n\n')


def _production_bundles(directory: Path, name: str) -> None:
    """What the centre does once: a production key, and the shipped bundles re-signed with it."""
    from models.cli import main as models_main

    assert models_main(["keygen", "--out-dir", str(directory), "--name", name]) == 0
    shipped = sorted((REPO / "models" / "bundles").glob("*.ewb"))
    dev_key = REPO / "models" / "bundles" / "dev-signing-key.DEVELOPMENT-ONLY.pub.pem"
    key = directory / f"{name}.key.pem"
    sign = ["sign", *map(str, shipped), "--key", str(key), "--trusted-keys", str(dev_key)]
    assert models_main([*sign, "--out-dir", str(directory / "bundles")]) == 0
    key.unlink()  # the private key never reaches a box


def _raw_rows(stats: str) -> int:
    return int(json.loads(stats)["by_kind"].get("raw", 0))


def _copy_repository(container: nspawn.Container) -> None:
    """The checkout as a box gets it: its files, and the native reader built for this arch."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO,
                           capture_output=True, check=True).stdout  # fmt: skip
    files += b"".join(path.relative_to(REPO).as_posix().encode() + b"\0"
                      for path in (REPO / "agent").glob("_rows*.so"))  # fmt: skip
    archive = subprocess.run(["tar", "--null", "-T", "-", "-cf", "-"], cwd=REPO, input=files,
                             capture_output=True, check=True).stdout  # fmt: skip
    destination = container.path(SRC)
    destination.mkdir(parents=True)
    subprocess.run(["tar", "-xf", "-", "-C", str(destination)], input=archive, check=True)


@pytest.fixture(scope="module")
def box(stack: object, kafka_bootstrap: str) -> Iterator[Box]:
    if os.geteuid() != 0:
        pytest.skip("booting a container needs root")
    started = time.monotonic()
    nspawn.ensure_base()
    pip_cache = nspawn.CACHE / "pip"
    pip_cache.mkdir(parents=True, exist_ok=True)
    container = nspawn.Container("edgewatch-deploy", binds={pip_cache: "/root/.cache/pip"})
    container.start()
    instance = Box(container, kafka_bootstrap, stack)
    instance.timings["boot"] = round(time.monotonic() - started, 1)
    try:
        _copy_repository(container)
        for directory, name in KEY_NAME.items():
            _production_bundles(container.path(directory), name)
        yield instance
    finally:
        print(f"\ndeploy timings (s): {json.dumps(instance.timings)}", file=sys.stderr)
        container.stop()


# -- 1. first install: stops before enabling, naming what is missing -------------------------
def test_first_install_names_the_missing_kafka_secret_and_enables_nothing(box: Box) -> None:
    done = box.install("install_1_no_secret")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "missing secret /etc/edgewatch/credentials/bridge-kafka-password" in done.stderr
    assert "kafka: Value error, SASL_SSL needs sasl_password" in done.stdout
    assert "valid agent configuration" in done.stdout
    assert box.sh("systemctl is-enabled edgewatch.target", check=False) != "enabled"
    # Finding 1: Mosquitto came up with the shipped conf.d file on Debian's main config.
    assert box.sh("systemctl is-active mosquitto") == "active"


def test_install_names_the_missing_kafka_ca_file(box: Box) -> None:
    """Finding 3: the bridge crash-looped in librdkafka; now the install's check says why."""
    box.sh("umask 077; echo 'kafka-password-only-in-credentials' > "
           "/etc/edgewatch/credentials/bridge-kafka-password")  # fmt: skip
    done = box.install("install_2_no_ca")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "kafka.ssl_ca_location: /etc/edgewatch/kafka-ca.pem does not exist" in done.stdout
    assert box.sh("systemctl is-enabled edgewatch.target", check=False) != "enabled"


def test_install_checks_files_as_the_service_user(box: Box) -> None:
    """Readable by root is not enough: the check runs as ``edgewatch``, like the service."""
    box.sh(f"install -m 0600 {nspawn.CONTAINER_CA} /etc/edgewatch/kafka-ca.pem")
    done = box.install("install_2_unreadable_ca")
    assert done.returncode == 1, done.stdout + done.stderr
    uid = box.sh("id -u edgewatch")
    assert f"/etc/edgewatch/kafka-ca.pem is not readable by this user (uid {uid})" in done.stdout


# -- 2. with the secret and the CA in place -------------------------------------------------
def test_install_validates_the_sasl_config_with_its_secret_via_loadcredential(box: Box) -> None:
    """Finding 2: the password reaches the install's check the way it reaches the service."""
    box.sh(f"install -m 0644 {nspawn.CONTAINER_CA} /etc/edgewatch/kafka-ca.pem")
    done = box.install("install_3_complete")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "valid bridge configuration" in done.stdout
    assert "(SASL_SSL)" in done.stdout
    assert "kafka-password-only-in-credentials" not in done.stdout + done.stderr


def test_both_units_are_active_after_ready(box: Box) -> None:
    for service in ("agent", "bridge"):
        unit = f"edgewatch-{service}.service"
        assert box.show(unit, "Type") == "notify"
        assert box.show(unit, "ActiveState") == "active"
        assert box.show(unit, "SubState") == "running"
        assert box.show(unit, "UnitFileState") == "enabled"
    assert box.sh("systemctl is-enabled edgewatch.target") == "enabled"


def test_the_installed_agent_reads_payloads_with_the_native_reader(box: Box) -> None:
    # The wheel built on the box carries the reader that `make native` built in the checkout.
    journal = box.sh("journalctl -u edgewatch-agent --no-pager -n 200")
    assert "native payload reader" in journal, journal[-2000:]


def test_installed_units_pass_systemd_analyze_verify(box: Box) -> None:
    units = ["edgewatch-agent.service", "edgewatch-bridge.service", "edgewatch.target"]
    done = box.container.run(["systemd-analyze", "verify", *units], check=False)
    assert done.returncode == 0
    assert (done.stdout + done.stderr).strip() == ""


@pytest.mark.parametrize("service", ["agent", "bridge"])
def test_security_exposure_is_at_most_2_5(box: Box, service: str) -> None:
    out = box.sh(f"systemd-analyze security edgewatch-{service}.service")
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", out)
    assert match is not None, out
    print(f"systemd-analyze security edgewatch-{service}.service: {match.group(1)}")
    assert float(match.group(1)) <= SECURITY_MAX


def test_only_the_production_key_is_trusted(box: Box) -> None:
    keys = box.sh("ls /etc/edgewatch/trusted-keys").split()
    assert keys == ["production.pub.pem"]


# -- 3. the running box ---------------------------------------------------------------------
def test_switch_to_the_dev_stack_kafka(box: Box) -> None:
    """The operator points the bridge at Kafka (here the dev stack's, on the host)."""
    box.container.path("/etc/edgewatch/bridge.toml").write_text(_bridge_config(box.kafka_bootstrap))
    box.sh("systemctl restart edgewatch-bridge")
    assert box.show("edgewatch-bridge.service", "ActiveState") == "active"


@pytest.mark.parametrize("service", ["agent", "bridge"])
def test_secrets_reach_the_service_only_through_loadcredential(box: Box, service: str) -> None:
    pid = box.main_pid(service)
    environ = box.sh(f"tr '\\0' '\\n' < /proc/{pid}/environ")
    secrets = {name: box.sh(f"cat /etc/edgewatch/credentials/{name}") for name in SECRETS}
    mine = {k: v for k, v in secrets.items() if k.startswith(service)}
    assert f"CREDENTIALS_DIRECTORY=/run/credentials/edgewatch-{service}.service" in environ
    for value in secrets.values():
        assert value not in environ
        assert value not in box.sh("cat /etc/edgewatch/*.toml /etc/systemd/system/edgewatch-*")
    credentials = f"/run/credentials/edgewatch-{service}.service"
    given = box.as_service(service, f"cat {credentials}/mqtt__password")
    assert given.returncode == 0
    assert given.stdout.strip() == mine[f"{service}-mqtt-password"]
    stored = box.as_service(service, f"cat /etc/edgewatch/credentials/{service}-mqtt-password")
    assert stored.returncode != 0


@pytest.mark.parametrize("service", ["agent", "bridge"])
def test_sandbox_refuses_writes_outside_the_allowed_paths(box: Box, service: str) -> None:
    outside = ["/etc/edgewatch/probe", "/opt/edgewatch/bundles/probe", "/usr/local/probe",
               "/var/lib/edgewatch/probe", "/root/probe", "/home/probe", "/etc/probe"]  # fmt: skip
    for path in outside:
        done = box.as_service(service, f"echo x > {path}")
        assert done.returncode != 0, f"{service} could write {path}"
        assert not box.container.path(path).exists()
    # Its state directory (bridge: the spool; agent: rollout state and baselines) is the one
    # place each may write.
    mine = f"/var/lib/edgewatch/{service}/probe"
    assert box.as_service(service, f"echo x > {mine}").returncode == 0
    box.sh(f"rm {mine}")


def test_events_flow_from_a_device_added_by_install_to_kafka_outside(box: Box) -> None:
    done = box.container.run(["bash", f"{SRC}/deploy/install.sh", "add-device", "till-1"])
    box.device_password = done.stdout.strip()
    messages = messages_from_file(SAMPLE, device_prefix="till-1")[:200]
    run = f"flow-{time.time_ns()}"
    device = Device(1883, "till-1", box.device_password).connect()
    try:
        for m in messages:
            payload = json.loads(m.payload)
            payload["event_id"] = f"{run}-{m.event_id}"
            assert device.publish("edge/till-1/raw/payments", json.dumps(payload).encode()) == 0
    finally:
        device.close()
    wanted = {f"{run}-{m.event_id}" for m in messages}

    def scored(records: list) -> set[str]:
        ids = set()
        for record in records:
            if record.topic() == "edge.scored.payments":
                document = json.loads(record.value())
                if document.get("device") == "till-1":
                    ids.add(document["event_id"])
        return ids & wanted

    records = consume(box.kafka_bootstrap, ["edge.scored.payments"],
                      until=lambda r: scored(r) == wanted, timeout_s=120)  # fmt: skip
    assert scored(records) == wanted
    documents = [json.loads(r.value()) for r in records if r.topic() == "edge.scored.payments"]
    models = {d["model"]["name"] for d in documents if d.get("event_id") in wanted}
    assert models == {"payments-fraud"}


@pytest.mark.parametrize("service", ["agent", "bridge"])
def test_kill_9_is_restarted_by_systemd(box: Box, service: str) -> None:
    old = box.main_pid(service)
    box.sh(f"kill -9 {old}")
    box.wait_active_with_new_pid(service, old, timeout_s=60)


def test_a_hung_agent_is_killed_by_the_watchdog_and_restarted(box: Box) -> None:
    dropin = "/etc/systemd/system/edgewatch-agent.service.d"
    box.sh(f"mkdir -p {dropin} && printf '[Service]\\nWatchdogSec=5\\n' > {dropin}/watchdog.conf"
           " && systemctl daemon-reload && systemctl restart edgewatch-agent")  # fmt: skip
    try:
        old = box.main_pid("agent")
        time.sleep(6)  # a healthy agent outlives one watchdog period
        assert box.main_pid("agent") == old
        box.sh(f"kill -STOP {old}")
        box.wait_active_with_new_pid("agent", old, timeout_s=60)
        journal = box.sh("journalctl -u edgewatch-agent --no-pager -n 200")
        assert "Watchdog timeout" in journal
    finally:
        box.sh(f"rm -rf {dropin} && systemctl daemon-reload && systemctl restart edgewatch-agent")


# -- 4. key rotation and revocation through install.sh ----------------------------------------
def _trusted(box: Box) -> list[str]:
    return [box.sh(f"sha256sum < /etc/edgewatch/trusted-keys/{name}").split()[0]
            for name in box.sh("ls /etc/edgewatch/trusted-keys").split()]  # fmt: skip


def _key_digest(box: Box, directory: str) -> str:
    return box.sh(f"sha256sum < {directory}/{KEY_NAME[directory]}.pub.pem").split()[0]


def test_rotation_trusts_both_keys_and_serves_bundles_of_the_new_one(box: Box) -> None:
    done = box.install("install_rotation", keys=(PROD, PROD_2), bundles=PROD_2)
    assert done.returncode == 0, done.stdout + done.stderr
    assert sorted(_trusted(box)) == sorted([_key_digest(box, PROD), _key_digest(box, PROD_2)])
    old_and_new = [f"{PROD}/bundles/payments-fraud.ewb", f"{PROD_2}/bundles/payments-fraud.ewb"]
    check = "/opt/edgewatch/venv/bin/python -m models.signing check --trusted-keys"
    assert box.sh(f"{check} /etc/edgewatch/trusted-keys {' '.join(old_and_new)}; echo $?") == "0"
    assert box.show("edgewatch-agent.service", "ActiveState") == "active"


def test_revocation_refuses_bundles_signed_only_by_the_old_key(box: Box) -> None:
    agent_pid = box.main_pid("agent")
    refused = box.install("install_revoke_refused", keys=(PROD_2,), bundles=PROD)
    assert refused.returncode == 1
    assert "not trusted" in refused.stderr
    assert len(_trusted(box)) == 2  # a refused install changes neither keys nor bundles
    assert box.main_pid("agent") == agent_pid
    done = box.install("install_revoke", keys=(PROD_2,), bundles=PROD_2)
    assert done.returncode == 0, done.stdout + done.stderr
    assert _trusted(box) == [_key_digest(box, PROD_2)]
    check = "/opt/edgewatch/venv/bin/python -m models.signing check --trusted-keys"
    old = box.container.run(["bash", "-c", f"{check} /etc/edgewatch/trusted-keys "
                             f"{PROD}/bundles/payments-fraud.ewb"], check=False)  # fmt: skip
    assert old.returncode == 1
    assert "not trusted" in old.stderr
    assert box.show("edgewatch-agent.service", "ActiveState") == "active"


# -- 5. upgrade -----------------------------------------------------------------------------
def test_install_again_upgrades_keeping_config_credentials_logins_and_spool(box: Box) -> None:
    kept = ["/etc/edgewatch/agent.toml", "/etc/edgewatch/bridge.toml",
            "/etc/edgewatch/trusted-keys/production-2.pub.pem", "/etc/mosquitto/edgewatch.passwd",
            *(f"/etc/edgewatch/credentials/{name}" for name in SECRETS)]  # fmt: skip
    before = box.digest(kept)
    stack = box.stack
    stack.stop_kafka()  # type: ignore[attr-defined]
    run = f"upgrade-{time.time_ns()}"
    wanted = {f"{run}-{i}" for i in range(50)}
    try:
        device = Device(1883, "till-1", box.device_password).connect()
        for event_id in sorted(wanted):
            body = json.dumps({"event_id": event_id, "amount": 1.0}).encode()
            assert device.publish("edge/till-1/raw/payments", body) == 0
        device.close()
        bridge = "/opt/edgewatch/venv/bin/edgewatch-bridge"
        spool_rows = f"{bridge} spool stats --config /etc/edgewatch/bridge.toml"
        wait_for(lambda: _raw_rows(box.sh(spool_rows)) >= len(wanted), 60,
                 "events held in the spool while Kafka is down")  # fmt: skip
        bridge_pid = box.main_pid("bridge")
        marker = f"# upgraded {run}"
        box.sh(f"echo '{marker}' >> {SRC}/bridge/__init__.py")  # a new release of the code
        done = box.install("install_upgrade", keys=(PROD_2,), bundles=PROD_2)
        assert done.returncode == 0, done.stdout + done.stderr
        installed = "/opt/edgewatch/venv/lib/python3.11/site-packages/bridge/__init__.py"
        assert marker in box.sh(f"cat {installed}")
        assert box.main_pid("bridge") != bridge_pid  # the upgraded code runs
        assert box.digest(kept) == before
        assert _raw_rows(box.sh(spool_rows)) >= len(wanted)
    finally:
        stack.start_kafka()  # type: ignore[attr-defined]

    def raw_ids(records: list) -> set[str]:
        return {json.loads(r.value()).get("event_id") for r in records} & wanted

    records = consume(box.kafka_bootstrap, ["edge.raw.payments"],
                      until=lambda r: raw_ids(r) == wanted, timeout_s=120)  # fmt: skip
    assert raw_ids(records) == wanted
    device = Device(1883, "till-1", box.device_password).connect()  # the device login survived
    device.close()
