"""Typed settings: a TOML file, then ``EDGEWATCH_*`` variables, then a credentials directory.

Precedence, highest first: keyword arguments, environment (``EDGEWATCH_MQTT__PORT=1884``),
files in ``$CREDENTIALS_DIRECTORY`` (systemd ``LoadCredential=``; a file named
``mqtt__password`` sets ``mqtt.password``), the TOML file. Every model forbids unknown keys
and describes every field, so ``validate-config`` can name exactly what is wrong.
"""

from __future__ import annotations

import os
from contextvars import ContextVar
from pathlib import Path
from typing import Any, ClassVar, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from plumbing.errors import ConfigError

ENV_PREFIX = "EDGEWATCH_"
NESTED_DELIMITER = "__"
MAX_CREDENTIAL_BYTES = 64 * 1024

_config_file: ContextVar[Path | None] = ContextVar("edgewatch_config_file", default=None)


class StrictModel(BaseModel):
    """A settings section: unknown keys are errors, values are checked on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)


class MqttSettings(StrictModel):
    """How a service reaches its local MQTT broker."""

    host: str = Field("127.0.0.1", description="Broker host name or address.")
    port: int = Field(1883, ge=1, le=65535, description="Broker TCP port.")
    client_id: str | None = Field(
        None,
        min_length=1,
        max_length=128,
        description="MQTT client id; defaults to '{service}-{node_id}'. Must be stable for "
        "the persistent session to survive restarts.",
    )
    username: str | None = Field(None, description="User name, if the broker wants one.")
    password: SecretStr | None = Field(None, description="Password; never logged.")
    tls_ca_file: Path | None = Field(None, description="CA bundle; setting it turns TLS on.")
    tls_cert_file: Path | None = Field(None, description="Client certificate (PEM) for mTLS.")
    tls_key_file: Path | None = Field(None, description="Client private key (PEM) for mTLS.")
    keepalive_s: int = Field(30, ge=5, le=3600, description="MQTT keepalive in seconds.")
    session_expiry_s: int = Field(
        7 * 24 * 3600,
        ge=0,
        description="How long the broker keeps the session (subscriptions and queued QoS 1 "
        "messages) while the service is away.",
    )
    receive_maximum: int = Field(
        1000,
        ge=1,
        le=65535,
        description="Most unacknowledged QoS 1 messages the broker may send us at once. This "
        "is the intake backpressure: with manual acks the broker stops sending at this count.",
    )
    reconnect_min_s: float = Field(0.5, gt=0, description="First reconnect delay.")
    reconnect_max_s: float = Field(30.0, gt=0, description="Longest reconnect delay.")
    topic_prefix: str = Field(
        "edge", pattern=r"^[^#+/]+$", description="First level of every edgewatch topic."
    )

    def input_files(self) -> dict[str, Path]:
        """The files this section reads, by field name (for ``validate-config``)."""
        files = {
            "tls_ca_file": self.tls_ca_file,
            "tls_cert_file": self.tls_cert_file,
            "tls_key_file": self.tls_key_file,
        }
        return {name: path for name, path in files.items() if path is not None}

    @model_validator(mode="after")
    def _tls_pairs(self) -> Self:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file must be set together")
        if self.tls_cert_file is not None and self.tls_ca_file is None:
            raise ValueError("a client certificate needs tls_ca_file as well")
        if self.reconnect_min_s > self.reconnect_max_s:
            raise ValueError("reconnect_min_s must not exceed reconnect_max_s")
        return self


LibrdkafkaValue = str | int | float | bool


class KafkaSettings(StrictModel):
    """How the bridge reaches the central Kafka cluster."""

    bootstrap_servers: str = Field(
        "127.0.0.1:9092", min_length=1, description="Comma-separated host:port list."
    )
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="librdkafka security.protocol."
    )
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = Field(
        None, description="SASL mechanism when security_protocol uses SASL."
    )
    sasl_username: str | None = Field(None, description="SASL user name.")
    sasl_password: SecretStr | None = Field(None, description="SASL password; never logged.")
    ssl_ca_location: Path | None = Field(None, description="CA bundle for SSL.")
    ssl_certificate_location: Path | None = Field(None, description="Client certificate.")
    ssl_key_location: Path | None = Field(None, description="Client private key.")
    ssl_key_password: SecretStr | None = Field(None, description="Key password; never logged.")
    extra: dict[str, LibrdkafkaValue] = Field(
        default_factory=dict,
        description="Further librdkafka properties passed through unchanged "
        "(e.g. {'socket.keepalive.enable' = true}).",
    )

    @model_validator(mode="after")
    def _sasl_complete(self) -> Self:
        uses_sasl = self.security_protocol.startswith("SASL")
        if uses_sasl and (self.sasl_mechanism is None or self.sasl_username is None):
            raise ValueError(f"{self.security_protocol} needs sasl_mechanism and sasl_username")
        if uses_sasl and self.sasl_password is None:
            raise ValueError(f"{self.security_protocol} needs sasl_password")
        return self

    def input_files(self) -> dict[str, Path]:
        """The files librdkafka will read, by field name (for ``validate-config``)."""
        files = {
            "ssl_ca_location": self.ssl_ca_location,
            "ssl_certificate_location": self.ssl_certificate_location,
            "ssl_key_location": self.ssl_key_location,
        }
        return {name: path for name, path in files.items() if path is not None}

    def librdkafka_config(self) -> dict[str, LibrdkafkaValue]:
        """The connection part of a librdkafka configuration (secrets revealed here only)."""
        config: dict[str, LibrdkafkaValue] = {
            "bootstrap.servers": self.bootstrap_servers,
            "security.protocol": self.security_protocol,
        }
        optional: dict[str, LibrdkafkaValue | None] = {
            "sasl.mechanism": self.sasl_mechanism,
            "sasl.username": self.sasl_username,
            "sasl.password": _reveal(self.sasl_password),
            "ssl.ca.location": _path(self.ssl_ca_location),
            "ssl.certificate.location": _path(self.ssl_certificate_location),
            "ssl.key.location": _path(self.ssl_key_location),
            "ssl.key.password": _reveal(self.ssl_key_password),
        }
        config.update({key: value for key, value in optional.items() if value is not None})
        config.update(self.extra)
        return config


def _reveal(secret: SecretStr | None) -> str | None:
    return None if secret is None else secret.get_secret_value()


def _path(path: Path | None) -> str | None:
    return None if path is None else str(path)


class CredentialsDirectorySource(PydanticBaseSettingsSource):
    """Values from one-file-per-secret directories (systemd credentials, Kubernetes secrets).

    A file ``kafka__sasl_password`` sets ``kafka.sasl_password``. Files whose first part
    names no setting are left alone: the directory may hold credentials of other tools.
    """

    def __init__(self, settings_cls: type[BaseSettings], directory: Path | None) -> None:
        super().__init__(settings_cls)
        self.directory = directory

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # unused: __call__ reads the whole directory at once

    def __call__(self) -> dict[str, Any]:
        if self.directory is None:
            return {}
        if not self.directory.is_dir():
            raise ConfigError(f"credentials directory {self.directory} is not a directory")
        values: dict[str, Any] = {}
        for entry in sorted(self.directory.iterdir()):
            parts = entry.name.lower().split(NESTED_DELIMITER)
            if parts[0] not in self.settings_cls.model_fields or not entry.is_file():
                continue
            if entry.stat().st_size > MAX_CREDENTIAL_BYTES:
                raise ConfigError(f"credential {entry.name} is larger than {MAX_CREDENTIAL_BYTES}")
            node = values
            for part in parts[:-1]:
                node = node.setdefault(part, {})
            node[parts[-1]] = entry.read_text(encoding="utf-8").rstrip("\r\n")
        return values


class ServiceSettings(BaseSettings):
    """Base of each service's settings; subclasses add their sections."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=NESTED_DELIMITER,
        extra="forbid",
        validate_assignment=True,
        case_sensitive=False,
    )

    service_name: ClassVar[str] = "service"

    node_id: str = Field(
        default_factory=lambda: os.uname().nodename,
        pattern=r"^[A-Za-z0-9_.-]{1,64}$",
        description="Name of this box; used in status topics, client ids and Kafka headers.",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="Root log level."
    )
    metrics_host: str = Field("127.0.0.1", description="Address of the Prometheus endpoint.")
    metrics_port: int | None = Field(
        None, ge=0, le=65535, description="Prometheus endpoint port; unset turns it off."
    )
    mqtt: MqttSettings = Field(default_factory=MqttSettings, description="Local MQTT broker.")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        credentials = os.environ.get("CREDENTIALS_DIRECTORY")
        return (
            init_settings,
            env_settings,
            CredentialsDirectorySource(settings_cls, Path(credentials) if credentials else None),
            TomlConfigSettingsSource(settings_cls, toml_file=_config_file.get()),
        )

    def summary(self) -> list[str]:
        """A few lines for ``validate-config``; services add their own sections."""
        return [
            f"node_id = {self.node_id}",
            f"mqtt = {self.mqtt.host}:{self.mqtt.port} as {self.mqtt_client_id}",
        ]

    def input_files(self) -> dict[str, Path]:
        """Every file or directory the service reads at start, by dotted field path.

        ``validate-config`` checks that each exists and is readable by the user running it
        (no I/O in the validators: loading settings never touches these paths).
        """
        return {f"mqtt.{name}": path for name, path in self.mqtt.input_files().items()}

    @property
    def mqtt_client_id(self) -> str:
        return self.mqtt.client_id or f"edgewatch-{self.service_name}-{self.node_id}"

    @classmethod
    def load(cls, config_file: Path | None = None, **overrides: Any) -> Self:
        """Read settings from ``config_file`` (optional), the environment and credentials."""
        if config_file is not None and not config_file.is_file():
            raise ConfigError(f"config file {config_file} does not exist")
        token = _config_file.set(config_file)
        try:
            return cls(**overrides)
        finally:
            _config_file.reset(token)
