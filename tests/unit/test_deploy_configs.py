"""The shipped configs and units: valid, given what systemd provides; checked files exist.

Findings 3 and 4 of issue 13: ``validate-config`` passed a bridge config naming a CA file
that did not exist (the service then crash-looped in librdkafka), and
``systemd-analyze verify`` rejected the units' Documentation= line.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from agent.cli import main as agent_main
from bridge.cli import main as bridge_main

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
BUNDLES = REPO / "models" / "bundles"


def _agent_config_for_here(tmp_path: Path) -> Path:
    """The example agent config with the box's paths pointing into this checkout."""
    keys = tmp_path / "trusted-keys"
    keys.mkdir()
    shutil.copy(BUNDLES / "dev-signing-key.DEVELOPMENT-ONLY.pub.pem", keys)
    text = (DEPLOY / "config" / "agent.toml").read_text()
    text = text.replace("/opt/edgewatch/bundles", str(BUNDLES))
    text = text.replace('"/etc/edgewatch/trusted-keys"', f'"{keys}"')
    config = tmp_path / "agent.toml"
    config.write_text(text)
    return config


def test_example_agent_config_is_valid(tmp_path: Path) -> None:
    assert agent_main(["validate-config", str(_agent_config_for_here(tmp_path))]) == 0


def test_validate_config_names_a_missing_bundle_and_key_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _agent_config_for_here(tmp_path)
    (tmp_path / "trusted-keys" / "dev-signing-key.DEVELOPMENT-ONLY.pub.pem").unlink()
    (tmp_path / "trusted-keys").rmdir()
    config.write_text(config.read_text().replace("sensors-skab.ewb", "gone.ewb"))
    assert agent_main(["validate-config", str(config)]) == 1
    out = capsys.readouterr().out
    assert "trusted_keys:" in out
    assert "does not exist" in out
    assert "streams.sensors.bundle:" in out
    assert "gone.ewb" in out
    assert "streams.payments.bundle" not in out


def test_example_bridge_config_needs_and_takes_its_kafka_secret(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    config = str(DEPLOY / "config" / "bridge.toml")
    ca = tmp_path / "kafka-ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    monkeypatch.setenv("EDGEWATCH_KAFKA__SSL_CA_LOCATION", str(ca))
    assert bridge_main(["validate-config", config]) == 1
    assert "sasl_password" in capsys.readouterr().out
    (tmp_path / "kafka__sasl_password").write_text("from-credentials\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    assert bridge_main(["validate-config", config]) == 0
    out = capsys.readouterr().out
    assert "from-credentials" not in out
    assert "edge.raw.{stream}" in out


def test_validate_config_fails_when_the_kafka_ca_file_is_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Finding 3: the shipped config names /etc/edgewatch/kafka-ca.pem; absent, it is an error."""
    (tmp_path / "kafka__sasl_password").write_text("secret\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    monkeypatch.setenv("EDGEWATCH_KAFKA__SSL_CA_LOCATION", str(tmp_path / "no-such-ca.pem"))
    assert bridge_main(["validate-config", str(DEPLOY / "config" / "bridge.toml")]) == 1
    out = capsys.readouterr().out
    assert f"kafka.ssl_ca_location: {tmp_path / 'no-such-ca.pem'} does not exist" in out


def test_units_run_the_console_scripts_with_the_example_paths() -> None:
    for service in ("agent", "bridge"):
        unit = (DEPLOY / "systemd" / f"edgewatch-{service}.service").read_text()
        assert f"edgewatch-{service} run --config /etc/edgewatch/{service}.toml" in unit
        assert f"edgewatch-{service} validate-config /etc/edgewatch/{service}.toml" in unit
        assert "Type=notify" in unit
        assert "WatchdogSec=" in unit


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_systemd_analyze_verify_finds_nothing_but_the_uninstalled_binaries() -> None:
    """Finding 4: ``Documentation=... README.md`` was an invalid URL."""
    names = ("edgewatch-agent.service", "edgewatch-bridge.service", "edgewatch.target")
    units = [str(DEPLOY / "systemd" / name) for name in names]
    done = subprocess.run(
        ["systemd-analyze", "verify", *units], capture_output=True, text=True, check=False
    )
    lines = {line for line in (done.stdout + done.stderr).splitlines() if line.strip()}
    # The venv exists on a box only (the booted-Debian test verifies the installed units).
    lines = {line for line in lines if "/opt/edgewatch/venv/bin/" not in line}
    assert lines == set()
