"""The bridge's configuration (``bridge.toml``, ``EDGEWATCH_*`` variables, credentials)."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal, Self

from pydantic import Field, model_validator

from bridge.routing import DEFAULT_ROUTES, Route
from plumbing.settings import KafkaSettings, ServiceSettings, StrictModel


class SpoolSettings(StrictModel):
    """The durable local spool every message passes through on its way to Kafka."""

    path: Path = Field(Path("/var/lib/edgewatch/bridge/spool.db"), description="SQLite file.")
    max_bytes: int = Field(
        512 * 1024 * 1024, ge=1024 * 1024, description="Spool size limit (payload bytes)."
    )
    max_age_s: float = Field(
        7 * 24 * 3600, gt=0, description="Rows older than this are dropped (and counted)."
    )
    overflow: Literal["pause", "drop_oldest_raw"] = Field(
        "drop_oldest_raw",
        description="When full: 'pause' withholds MQTT acks until there is room; "
        "'drop_oldest_raw' drops the oldest raw events and keeps scored, alerts and status.",
    )
    group_commit_max: int = Field(
        2000, ge=1, le=100_000, description="Most messages per transaction (one fsync)."
    )
    group_commit_wait_ms: float = Field(
        5.0, ge=0, le=1000, description="Longest wait to fill a group once one message is in."
    )
    cache_kib: int = Field(2048, ge=256, description="SQLite page cache per connection.")


class DirectSettings(StrictModel):
    """The direct path: produce at once, ack MQTT on Kafka's ack, no spool write."""

    enabled: bool = Field(
        True, description="Take the direct path while Kafka keeps up; false spools everything."
    )
    max_wait_s: float = Field(
        1.0, gt=0, le=60,
        description="Kafka is 'slow' once the oldest record in flight waited this long: new "
        "messages then go to the spool, and what is in flight is spooled too, freeing the MQTT "
        "window. acks=all answers in 5-50 ms on a healthy cluster; 1 s rides out a busy box.",
    )  # fmt: skip
    resume_wait_s: float = Field(
        0.25, gt=0, le=60,
        description="Back to the direct path once the spool is handed over and nothing is in "
        "flight, or Kafka's last acks came within this (below max_wait_s: no flapping).",
    )  # fmt: skip
    linger_ms: float = Field(
        1.0, ge=0, le=1000,
        description="librdkafka linger.ms for the bridge's producer. On the direct path the "
        "MQTT window (mqtt.receive_maximum unacked messages) over Kafka's ack latency bounds "
        "the rate, not the CPU: on the 2-core box a 50k backlog went at 74k (median of 3) "
        "with 1 ms, 46k with 0 and 32k with 5 (tests/bench/bridge_throughput.py backlog).",
    )  # fmt: skip


class ModelDeliverySettings(StrictModel):
    """New model bundles from Kafka to the box's MQTT broker (retained)."""

    enabled: bool = Field(True, description="Consume the models topic and republish bundles.")
    kafka_topic: str = Field("edge.models", description="Compacted topic of signed bundles.")
    group_id: str | None = Field(
        None, description="Consumer group; default 'edgewatch-bridge-{node_id}' (every box "
        "gets every model)."
    )  # fmt: skip
    max_bundle_bytes: int = Field(16 * 1024 * 1024, ge=1024, description="Larger are skipped.")


class BridgeSettings(ServiceSettings):
    """Settings of ``edgewatch-bridge run``."""

    service_name: ClassVar[str] = "bridge"

    kafka: KafkaSettings = Field(default_factory=KafkaSettings, description="Central Kafka.")
    routes: tuple[Route, ...] = Field(
        DEFAULT_ROUTES, min_length=1, description="MQTT filter → Kafka topic rules, in order."
    )
    spool: SpoolSettings = Field(default_factory=SpoolSettings, description="Durable spool.")
    direct: DirectSettings = Field(
        default_factory=DirectSettings, description="Direct path while Kafka keeps up."
    )
    models: ModelDeliverySettings = Field(
        default_factory=ModelDeliverySettings, description="Model delivery to the box."
    )
    queue_capacity: int = Field(
        4000, ge=1,
        description="Most MQTT messages taken in and waiting for the pump; at least "
        "mqtt.receive_maximum. Past it paho's thread stops reading (TCP holds the broker "
        "back; counted): the broker's window alone does not bound intake (Mosquitto 2.0 "
        "sends a session's whole backlog once acks flow). 4,000 rather than 2,000: the "
        "spool path took a 50k backlog at 50.5k msg/s instead of 43.7k (quiet 2-core box, "
        "medians of 3), same peak RSS (65 MB).",
    )  # fmt: skip
    queue_max_bytes: int = Field(
        4 * 1024 * 1024, ge=65536,
        description="Most payload bytes waiting in the intake queue (a batch always enters "
        "an empty queue). 4,000 messages of ~600 bytes take 2.4 MB.",
    )  # fmt: skip
    max_message_bytes: int = Field(
        1_000_000, ge=1024, description="Larger messages go to the dead-letter topic instead."
    )
    inflight_max: int = Field(
        4000, ge=100,
        description="Most messages handed to the Kafka producer and not yet acknowledged "
        "(direct and spooled); each is held by Python and by librdkafka. Peak RSS on the "
        "2-core box with ~620-byte messages (50k backlog; outage = 50k arriving while Kafka "
        "is down, then 25k more while it replays): 4,000 gave 61-65 MB direct, 65-72 "
        "spooled, 68-70 outage; 8,000 gave 66-69, 66-69, 74-75, no faster; 2,000 forwarded "
        "a backlog slower (direct 23-45k msg/s vs 42-47k with 4,000).",
    )  # fmt: skip
    inflight_max_bytes: int = Field(
        4 * 1024 * 1024, ge=65536,
        description="Most bytes (key + value + 64 per message) handed to the Kafka producer "
        "and not yet acknowledged; a message larger than this goes alone. Bounds memory "
        "when messages are large (inflight_max counts messages only).",
    )  # fmt: skip
    deadletter_topic: str = Field("edge.deadletter", description="Kafka dead-letter topic.")
    probe_min_s: float = Field(0.5, gt=0, description="First outage probe delay.")
    probe_max_s: float = Field(30.0, gt=0, description="Longest outage probe delay.")

    @model_validator(mode="after")
    def _bounds(self) -> Self:
        if self.queue_capacity < self.mqtt.receive_maximum:
            raise ValueError(
                f"queue_capacity ({self.queue_capacity}) must be at least "
                f"mqtt.receive_maximum ({self.mqtt.receive_maximum})"
            )
        if self.probe_min_s > self.probe_max_s:
            raise ValueError("probe_min_s must not exceed probe_max_s")
        if self.direct.resume_wait_s >= self.direct.max_wait_s:
            raise ValueError("direct.resume_wait_s must be below direct.max_wait_s")
        return self

    def input_files(self) -> dict[str, Path]:
        kafka = {f"kafka.{name}": path for name, path in self.kafka.input_files().items()}
        return {**super().input_files(), **kafka}

    def summary(self) -> list[str]:
        return [
            *super().summary(),
            f"kafka = {self.kafka.bootstrap_servers} ({self.kafka.security_protocol})",
            f"spool = {self.spool.path} (max {self.spool.max_bytes} bytes, {self.spool.overflow})",
            *(f"route {r.filter} -> {r.topic} key {r.key}" for r in self.routes),
        ]
