"""The bridge's Prometheus metrics, in a registry of its own."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from plumbing.metrics import BATCH_BUCKETS


class BridgeMetrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.received = Counter(
            "edgewatch_bridge_received", "MQTT messages taken in", ["kind"], registry=r
        )
        self.forwarded = Counter(
            "edgewatch_bridge_forwarded", "Messages Kafka acknowledged", ["topic"], registry=r
        )
        self.deadletters = Counter(
            "edgewatch_bridge_deadletters",
            "Messages sent to the dead-letter topic",
            ["reason"],
            registry=r,
        )
        self.delivery_errors = Counter(
            "edgewatch_bridge_delivery_errors",
            "Kafka errors (delivery and client)",
            ["code"],
            registry=r,
        )
        self.spool_rows = Gauge("edgewatch_bridge_spool_rows", "Rows in the spool", registry=r)
        self.spool_bytes = Gauge("edgewatch_bridge_spool_bytes", "Bytes in the spool", registry=r)
        self.spool_oldest_age = Gauge(
            "edgewatch_bridge_spool_oldest_age_seconds", "Age of the oldest spooled row", registry=r
        )
        self.spool_dropped = Counter(
            "edgewatch_bridge_spool_dropped",
            "Rows dropped by the overflow policy or the age limit",
            ["kind", "cause"],
            registry=r,
        )
        self.spool_full = Counter(
            "edgewatch_bridge_spool_full",
            "Group commits refused for lack of room (intake paused)",
            registry=r,
        )
        self.group_size = Histogram(
            "edgewatch_bridge_group_commit_size",
            "Messages per spool transaction",
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.replay_rate = Gauge(
            "edgewatch_bridge_replay_msgs_per_second",
            "Delivery rate while a backlog drains",
            registry=r,
        )
        self.inflight = Gauge(
            "edgewatch_bridge_kafka_inflight",
            "Messages handed to the producer, not yet acknowledged",
            registry=r,
        )
        self.inflight_full = Counter(
            "edgewatch_bridge_inflight_full",
            "Times records waited for room in flight (inflight_max, inflight_max_bytes)",
            registry=r,
        )
        self.intake_full = Counter(
            "edgewatch_bridge_intake_full",
            "Times MQTT intake waited because the intake queue was full (queue_capacity, "
            "queue_max_bytes)",
            registry=r,
        )
        self.unacked = Gauge(
            "edgewatch_bridge_mqtt_unacked",
            "MQTT messages received but not yet acknowledged",
            registry=r,
        )
        self.direct = Gauge(
            "edgewatch_bridge_direct_path",
            "1 while messages go straight to Kafka, 0 while they go through the spool",
            registry=r,
        )
        self.path_switches = Counter(
            "edgewatch_bridge_path_switches",
            "Switches between the direct path and the spool, by the path switched to",
            ["to"],
            registry=r,
        )
        self.rescued = Counter(
            "edgewatch_bridge_rescued",
            "Records in flight on the direct path written to the spool at a switch",
            registry=r,
        )
        self.kafka_up = Gauge("edgewatch_bridge_kafka_up", "1 when Kafka is reachable", registry=r)
        self.mqtt_up = Gauge("edgewatch_bridge_mqtt_up", "1 when MQTT is connected", registry=r)
        self.redelivered = Counter(
            "edgewatch_bridge_mqtt_redelivered",
            "MQTT messages delivered again by the broker",
            registry=r,
        )
        self.resent_after_restart = Counter(
            "edgewatch_bridge_resent_after_restart",
            "Rows found in the spool at start-up (possible duplicates in Kafka)",
            registry=r,
        )
        self.models_delivered = Counter(
            "edgewatch_bridge_models_delivered", "Model bundles republished to MQTT", registry=r
        )
        self.models_skipped = Counter(
            "edgewatch_bridge_models_skipped",
            "Model records not republished",
            ["reason"],
            registry=r,
        )
