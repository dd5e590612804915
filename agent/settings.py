"""The agent's configuration (``agent.toml``, ``EDGEWATCH_*`` variables, credentials)."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Self

from pydantic import Field, model_validator

from plumbing.settings import MqttSettings, ServiceSettings, StrictModel

STREAM_NAME = r"^[A-Za-z0-9_-]{1,64}$"


class StreamSettings(StrictModel):
    """Where the model of one stream comes from."""

    bundle: Path | None = Field(
        None, description="Bundle file to load at start (verified like any other)."
    )
    model: str | None = Field(
        None,
        pattern=STREAM_NAME,
        description="Model name whose retained bundle on '{prefix}/models/{model}' replaces "
        "the current one whenever a newer, validly signed version arrives.",
    )

    @model_validator(mode="after")
    def _has_a_source(self) -> Self:
        if self.bundle is None and self.model is None:
            raise ValueError("set bundle, model, or both")
        return self


class AgentMqttSettings(MqttSettings):
    """The broker connection, with the agent's smaller window of unacked messages."""

    receive_maximum: int = Field(
        100,
        ge=1,
        le=65535,
        description="Most unacknowledged raw messages at once (intake backpressure). 100 keeps "
        "a scoring batch busy; larger windows measured slower and bigger here, since Mosquitto "
        "and paho both scan their in-flight lists per acknowledgement.",
    )


class AgentSettings(ServiceSettings):
    """Settings of ``edgewatch-agent run``."""

    service_name: ClassVar[str] = "agent"

    mqtt: AgentMqttSettings = Field(
        default_factory=AgentMqttSettings, description="Local MQTT broker."
    )

    streams: dict[str, StreamSettings] = Field(
        ..., min_length=1, description="Streams to score, by name (the last topic level)."
    )
    trusted_keys: Path = Field(
        ..., description="Directory of Ed25519 public keys (*.pem) that may sign bundles."
    )
    queue_capacity: int = Field(
        128,
        ge=1,
        le=1_000_000,
        description="Bound of the intake queue. At least mqtt.receive_maximum, so the broker's "
        "flow control pauses intake before the queue could overflow.",
    )
    batch_max: int = Field(
        64,
        ge=1,
        le=4096,
        description="Most messages scored in one call (64 keeps two "
        "interpreter sizes resident; larger batches measured no faster).",
    )
    batch_wait_ms: float = Field(
        2.0, ge=0, le=1000, description="Longest wait to fill a batch once one message is in."
    )
    max_payload_bytes: int = Field(
        64 * 1024, ge=64, le=16 * 1024 * 1024, description="Larger payloads are dead-lettered."
    )
    max_json_depth: int = Field(
        32, ge=2, le=1000, description="Deeper JSON nesting is dead-lettered, not parsed."
    )
    max_devices: int = Field(
        10_000,
        ge=1,
        description="Devices whose window history is kept (windowed models); the least "
        "recently seen is evicted beyond this, and each eviction is counted.",
    )
    max_bundle_bytes: int = Field(
        16 * 1024 * 1024, ge=1024, description="Largest model bundle accepted."
    )
    contributions_top_k: int = Field(
        3, ge=0, le=64, description="Features listed in each scored event's contributions."
    )
    drain_timeout_s: float = Field(
        10.0, gt=0, description="On shutdown, how long to wait for in-flight messages."
    )

    @model_validator(mode="after")
    def _queue_covers_flow_control(self) -> Self:
        if self.queue_capacity < self.mqtt.receive_maximum:
            raise ValueError(
                f"queue_capacity ({self.queue_capacity}) must be at least "
                f"mqtt.receive_maximum ({self.mqtt.receive_maximum})"
            )
        return self

    def input_files(self) -> dict[str, Path]:
        bundles = {
            f"streams.{name}.bundle": stream.bundle
            for name, stream in self.streams.items()
            if stream.bundle is not None
        }
        return {**super().input_files(), "trusted_keys": self.trusted_keys, **bundles}

    def summary(self) -> list[str]:
        lines = super().summary()
        for name, stream in self.streams.items():
            source = ", ".join(
                part
                for part in (
                    f"bundle {stream.bundle}" if stream.bundle else "",
                    f"model topic {self.mqtt.topic_prefix}/models/{stream.model}"
                    if stream.model
                    else "",
                )
                if part
            )
            lines.append(f"stream {name}: {source}")
        lines.append(f"trusted keys: {self.trusted_keys}")
        return lines
