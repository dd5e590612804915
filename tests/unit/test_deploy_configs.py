"""The shipped example configs validate, given the credentials systemd would provide."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.cli import main as agent_main
from bridge.cli import main as bridge_main

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def test_example_agent_config_is_valid() -> None:
    assert agent_main(["validate-config", str(DEPLOY / "config" / "agent.toml")]) == 0


def test_example_bridge_config_needs_and_takes_its_kafka_secret(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    config = str(DEPLOY / "config" / "bridge.toml")
    assert bridge_main(["validate-config", config]) == 1
    assert "sasl_password" in capsys.readouterr().out
    (tmp_path / "kafka__sasl_password").write_text("from-credentials\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    assert bridge_main(["validate-config", config]) == 0
    out = capsys.readouterr().out
    assert "from-credentials" not in out
    assert "edge.raw.{stream}" in out


def test_units_run_the_console_scripts_with_the_example_paths() -> None:
    for service in ("agent", "bridge"):
        unit = (DEPLOY / "systemd" / f"edgewatch-{service}.service").read_text()
        assert f"edgewatch-{service} run --config /etc/edgewatch/{service}.toml" in unit
        assert f"edgewatch-{service} validate-config /etc/edgewatch/{service}.toml" in unit
        assert "Type=notify" in unit
        assert "WatchdogSec=" in unit
