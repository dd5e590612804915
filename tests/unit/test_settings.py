"""Settings: file, environment and credentials; validate-config names every bad field."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from agent.cli import main as agent_main
from agent.settings import AgentSettings
from plumbing.settings import KafkaSettings, MqttSettings

VALID = """
node_id = "box-1"
trusted_keys = "models/bundles"  # validate-config checks that it exists

[mqtt]
host = "127.0.0.1"
port = 1883
username = "agent"
password = "s3cret-from-file"

[streams.payments]
bundle = "models/bundles/payments-fraud.ewb"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(text)
    return path


def test_valid_file_loads_and_validate_config_exits_0(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, VALID)
    settings = AgentSettings.load(path)
    assert settings.mqtt.port == 1883
    assert settings.streams["payments"].bundle == Path("models/bundles/payments-fraud.ewb")
    assert agent_main(["validate-config", str(path)]) == 0
    out = capsys.readouterr().out
    assert "valid agent configuration" in out
    assert "s3cret" not in out


def test_wrong_type_and_unknown_key_exit_1_naming_both_paths(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = VALID.replace("port = 1883", 'port = "not-a-port"\ncolour = "blue"')
    path = write(tmp_path, bad)
    assert agent_main(["validate-config", str(path)]) == 1
    out = capsys.readouterr().out
    assert "mqtt.port" in out
    assert "'not-a-port'" in out
    assert "mqtt.colour" in out
    assert "Extra inputs are not permitted" in out


def test_console_script_validate_config_exit_codes(tmp_path: Path) -> None:
    good = write(tmp_path, VALID)
    run = [sys.executable, "-m", "agent.cli", "validate-config"]
    assert subprocess.run([*run, str(good)], capture_output=True, check=False).returncode == 0
    bad = tmp_path / "bad.toml"
    bad.write_text("queue_capacity = -5\n" + VALID)
    result = subprocess.run([*run, str(bad)], capture_output=True, text=True, check=False)
    assert result.returncode == 1
    assert "queue_capacity: Input should be greater than or equal to 1" in result.stdout


def test_not_toml_and_missing_file_are_clear_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, "this is = = not toml")
    assert agent_main(["validate-config", str(path)]) == 1
    assert "not valid TOML" in capsys.readouterr().out
    assert agent_main(["validate-config", str(tmp_path / "absent.toml")]) == 1
    assert "does not exist" in capsys.readouterr().out


def test_environment_overrides_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, VALID)
    monkeypatch.setenv("EDGEWATCH_MQTT__PORT", "18830")
    monkeypatch.setenv("EDGEWATCH_BATCH_MAX", "64")
    settings = AgentSettings.load(path)
    assert settings.mqtt.port == 18830
    assert settings.mqtt.host == "127.0.0.1"  # the rest of the section still from the file
    assert settings.batch_max == 64


def test_credentials_directory_supplies_secrets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, VALID.replace('password = "s3cret-from-file"\n', ""))
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "mqtt__password").write_text("from-systemd\n")
    (credentials / "unrelated-tool-key").write_text("ignored")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials))
    settings = AgentSettings.load(path)
    assert settings.mqtt.password is not None
    assert settings.mqtt.password.get_secret_value() == "from-systemd"


def test_secrets_never_show_in_repr_or_dump() -> None:
    mqtt = MqttSettings(username="u", password="hunter2")  # type: ignore[arg-type]
    kafka = KafkaSettings(
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username="edge",
        sasl_password="kafka-pass",  # type: ignore[arg-type]
    )
    for text in (repr(mqtt), str(mqtt), repr(kafka), kafka.model_dump_json()):
        assert "hunter2" not in text
        assert "kafka-pass" not in text
    assert kafka.librdkafka_config()["sasl.password"] == "kafka-pass"


def test_kafka_dict_has_passthrough_and_rules() -> None:
    kafka = KafkaSettings(bootstrap_servers="k1:9092,k2:9092", extra={"socket.nagle.disable": True})
    config = kafka.librdkafka_config()
    assert config["bootstrap.servers"] == "k1:9092,k2:9092"
    assert config["socket.nagle.disable"] is True
    with pytest.raises(ValidationError, match="sasl_mechanism"):
        KafkaSettings(security_protocol="SASL_SSL")


def test_queue_must_cover_receive_maximum(tmp_path: Path) -> None:
    path = write(tmp_path, "queue_capacity = 10\n" + VALID)
    with pytest.raises(ValidationError, match="receive_maximum"):
        AgentSettings.load(path)
