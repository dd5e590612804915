"""The agent's Prometheus metrics, in a registry of its own."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from plumbing.metrics import BATCH_BUCKETS, LATENCY_BUCKETS_S


class AgentMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.messages_in = Counter(
            "edgewatch_agent_messages_in", "Raw messages received", ["stream"], registry=r
        )
        self.redelivered = Counter(
            "edgewatch_agent_redelivered",
            "Raw messages the broker delivered again (duplicates downstream)",
            registry=r,
        )
        self.messages_out = Counter(
            "edgewatch_agent_messages_out", "Messages published", ["stream", "kind"], registry=r
        )
        self.anomalies = Counter(
            "edgewatch_agent_anomalies", "Events at or above threshold", ["stream"], registry=r
        )
        self.deadletters = Counter(
            "edgewatch_agent_deadletters", "Rejected messages", ["reason"], registry=r
        )
        self.batch_size = Histogram(
            "edgewatch_agent_batch_size", "Messages per micro-batch", buckets=BATCH_BUCKETS,
            registry=r,
        )  # fmt: skip
        self.inference_seconds = Histogram(
            "edgewatch_agent_inference_seconds", "Interpreter time per batch",
            buckets=LATENCY_BUCKETS_S, registry=r,
        )  # fmt: skip
        self.latency_seconds = Histogram(
            "edgewatch_agent_latency_seconds",
            "Receipt of a raw message to the broker's ack of its last output",
            buckets=LATENCY_BUCKETS_S, registry=r,
        )  # fmt: skip
        self.queue_depth = Gauge(
            "edgewatch_agent_queue_depth", "Messages waiting in the intake queue", registry=r
        )
        self.unacked = Gauge(
            "edgewatch_agent_unacked", "Raw messages waiting for their outputs' acks", registry=r
        )
        self.intake_waits = Counter(
            "edgewatch_agent_intake_full",
            "Times the intake queue was full and intake waited (backpressure)",
            registry=r,
        )
        self.window_evictions = Counter(
            "edgewatch_agent_window_evictions",
            "Device histories evicted beyond max_devices",
            ["stream"],
            registry=r,
        )
        self.baseline_devices = Gauge(
            "edgewatch_agent_baseline_devices",
            "Devices with a learned baseline or warming up, per stream",
            ["stream", "state"],
            registry=r,
        )
        self.baselines_learned = Counter(
            "edgewatch_agent_baselines_learned", "Device warm-ups completed", ["stream"],
            registry=r,
        )  # fmt: skip
        self.baseline_evictions = Counter(
            "edgewatch_agent_baseline_evictions",
            "Device baselines or warm-ups forgotten beyond baselines.max_devices",
            ["stream"],
            registry=r,
        )
        self.baseline_resets = Counter(
            "edgewatch_agent_baseline_resets", "Device baselines reset by an operator",
            ["stream"], registry=r,
        )  # fmt: skip
        self.model_info = Gauge(
            "edgewatch_agent_model_info",
            "Model in service per stream (value 1)",
            ["stream", "name", "version", "sha256"],
            registry=r,
        )
        self.model_rejected = Counter(
            "edgewatch_agent_model_rejected", "Model bundles refused", ["reason"], registry=r
        )
        self.rollout_transitions = Counter(
            "edgewatch_agent_rollout_transitions",
            "Model rollout transitions (shadow_started, promoted, rejected, rolled_back, ...)",
            ["stream", "kind"],
            registry=r,
        )
        self.instructions_refused = Counter(
            "edgewatch_agent_instructions_refused",
            "Instructions from the centre refused (unsigned, untrusted_key, bad_signature, "
            "malformed, stale, other_model)",
            ["reason"],
            registry=r,
        )
        self.shadow_events = Counter(
            "edgewatch_agent_shadow_events",
            "Events scored by a second model beside the serving one (shadow or probation)",
            ["stream"],
            registry=r,
        )
        self.shadow_errors = Counter(
            "edgewatch_agent_shadow_errors",
            "Rows the second model failed on (inference error or input it refuses)",
            ["stream"],
            registry=r,
        )
        self.publish_refused = Counter(
            "edgewatch_agent_publish_refused",
            "Publishes the broker refused (PUBACK reason code), sent again after a delay",
            ["reason"],
            registry=r,
        )
        self.stale_acks = Counter(
            "edgewatch_agent_stale_acks",
            "Acks skipped because the connection changed (the broker redelivers)",
            registry=r,
        )
