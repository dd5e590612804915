"""The agent's configuration (``agent.toml``, ``EDGEWATCH_*`` variables, credentials)."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Self

from pydantic import Field, model_validator

from agent.rollout import Rules
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
        description="Model name whose retained bundle on '{prefix}/models/{model}' is "
        "followed: a newer, validly signed version for this box's cohort is shadowed, then "
        "promoted or rejected by the rollout rules; '{prefix}/models/{model}--serve' carries "
        "signed instructions from the centre.",
    )

    @model_validator(mode="after")
    def _has_a_source(self) -> Self:
        if self.bundle is None and self.model is None:
            raise ValueError("set bundle, model, or both")
        return self


_RULES = Rules()  # the defaults below are the state machine's own


class RolloutRulesSettings(StrictModel):
    """When a candidate is promoted, rejected or rolled back (a bundle may override each)."""

    shadow_events: int = Field(
        _RULES.shadow_events,
        ge=0,
        description="A candidate scores at least this many events in shadow before it is "
        "judged: 2,000 puts a 1 % alert rate's count near 20, enough to see a 2x change.",
    )
    shadow_s: float = Field(
        _RULES.shadow_s,
        ge=0,
        description="...and spends at least this many seconds in shadow (10 minutes: a "
        "burst of one device does not decide alone). Both minimums must be reached.",
    )
    probation_events: int = Field(
        _RULES.probation_events,
        ge=0,
        description="After promotion the previous model keeps scoring beside it for at "
        "least this many events; 0 with probation_s 0 turns probation off.",
    )
    probation_s: float = Field(
        _RULES.probation_s, ge=0, description="...and at least this many seconds (30 min)."
    )
    check_events: int = Field(
        _RULES.check_events,
        ge=1,
        description="On probation the rules are checked every this many events, so a model "
        "that turns bad is rolled back within one check window.",
    )
    alert_rate_ratio_max: float = Field(
        _RULES.alert_rate_ratio_max,
        gt=0,
        description="Highest candidate alert rate, as a multiple of the current one's "
        "(plus alert_rate_slack): twice the alerts means twice the analysts' work.",
    )
    alert_rate_ratio_min: float = Field(
        _RULES.alert_rate_ratio_min,
        ge=0,
        description="Lowest candidate alert rate, as a multiple of the current one's (minus "
        "alert_rate_slack): a model that goes quiet misses what the current one finds.",
    )
    alert_rate_slack: float = Field(
        _RULES.alert_rate_slack,
        ge=0,
        le=1,
        description="Absolute widening of the band (1 point), so that rates near zero do "
        "not fail on a handful of alerts.",
    )
    min_rank_correlation: float = Field(
        _RULES.min_rank_correlation,
        ge=-1,
        le=1,
        description="Least Spearman correlation of the two models' scores: a retrained "
        "model should order events much as the current one does (a retrain of the same "
        "data measured above 0.95 here; unrelated scores are near 0).",
    )
    batch_latency_budget_ms: float = Field(
        _RULES.batch_latency_budget_ms,
        gt=0,
        description="Highest 95th percentile of the new model's time per batch (inputs and "
        "inference). A 64-row batch takes well under 1 ms on the idle dev box; 50 ms still "
        "stops a model 50x too heavy...",
    )
    batch_latency_ratio_max: float = Field(
        _RULES.batch_latency_ratio_max,
        gt=0,
        description="...unless it is within this multiple of the current model's on the "
        "same batches: on a box busy with other work both slow down alike (measured: a 2-core "
        "box at load 20 put a p95 of 75 ms on the shipped model).",
    )
    max_errors: int = Field(
        _RULES.max_errors,
        ge=0,
        description="Rows the new model may fail on (inference errors, inputs its feature "
        "spec refuses that the current one accepts): none.",
    )
    rank_sample: int = Field(
        _RULES.rank_sample,
        ge=16,
        le=1_000_000,
        description="Score pairs and batch times kept per window (a uniform reservoir "
        "sample): bounds memory at 16 bytes per pair whatever the window's length.",
    )

    def rules(self) -> Rules:
        return Rules(**self.model_dump())


class RolloutSettings(StrictModel):
    """Safe model changes: shadow, promotion, probation, rollback, kept across restarts."""

    state_dir: Path | None = Field(
        None,
        description="Where the last few verified bundles and each stream's rollout state "
        "are kept (the agent serves what was promoted after a restart, and rolls back "
        "without the network). Unset: kept in memory only, lost on restart.",
    )
    keep_bundles: int = Field(
        4,
        ge=2,
        le=32,
        description="Bundles kept per model: the active one and up to keep_bundles - 1 "
        "previous ones to roll back to (each a few tens of KB for the shipped models).",
    )
    rules: RolloutRulesSettings = Field(
        default_factory=RolloutRulesSettings, description="Promotion and rollback rules."
    )


class BaselineSettings(StrictModel):
    """Per-device baselines, for models whose manifest asks for them (``baseline``)."""

    state_dir: Path | None = Field(
        None,
        description="Where each stream's learned baselines are kept (one JSON file per "
        "stream, written atomically whenever a baseline is learned, reset or evicted) and "
        "where 'edgewatch-agent baseline reset' leaves its requests. Unset: in memory only, "
        "and every device warms up again after a restart.",
    )
    max_devices: int = Field(
        1000,
        ge=1,
        le=1_000_000,
        description="Devices with a baseline or a warm-up in progress, per stream; beyond "
        "it the least recently seen is forgotten (counted). A learned baseline takes "
        "~0.3 KB, a warm-up in progress warmup_rows x fields x 8 bytes (25.6 KB for the "
        "SKAB model): 1,000 devices all warming up at once stay near 26 MB.",
    )
    poll_s: float = Field(
        1.0,
        gt=0,
        le=60,
        description="How often reset requests are picked up and changed baselines saved: "
        "a baseline changes once per device per warm-up, so a second costs nothing.",
    )


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
    native_reader: bool = Field(
        True,
        description="Read payloads with the native reader where it is built (agent/native, "
        "`make native`); false reads them in Python. Both read a payload the same way; the "
        "log says which one serves.",
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
    baselines: BaselineSettings = Field(
        default_factory=BaselineSettings, description="Per-device baselines."
    )
    rollout: RolloutSettings = Field(
        default_factory=RolloutSettings, description="Model rollout on this box."
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
