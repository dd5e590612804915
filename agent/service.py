"""The agent service: MQTT intake → micro-batches → pipeline → QoS 1 publishes → acks.

Two MQTT connections: ``intake`` subscribes with manual acks, ``output`` publishes. Intake's
network thread only enqueues (raw messages into a bounded queue, model bundles into a
latest-wins slot) and blocks when the queue is full; output's network thread handles the
PUBACKs that complete raw messages, so a blocked intake can never stall them. One worker
drains batches, scores and publishes, and waits while ``mqtt.receive_maximum`` raw messages
are unacked (the broker's flow control is not relied on alone). A raw message is acked when
the broker acknowledged everything it produced.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter
from typing import Any

import paho.mqtt.client as paho

from agent.acks import AckTracker, Publish
from agent.metrics import AgentMetrics
from agent.pipeline import Inbound, Limits, Outcome, Pipeline, StreamModel
from agent.settings import AgentSettings
from models.bundle import Bundle, BundleError, load_bundle, load_trusted_keys, verify_bundle
from plumbing.events import Topics, dumps
from plumbing.lifecycle import sd_notify
from plumbing.metrics import serve_metrics
from plumbing.mqtt import MqttConnection

log = logging.getLogger(__name__)

_STOP = object()
OUTPUTS_PER_RAW = 2  # a scored event and an alert (or one dead-letter)


class AgentService:
    def __init__(self, settings: AgentSettings) -> None:
        self.settings = settings
        self.topics = Topics(settings.mqtt.topic_prefix)
        self.metrics = AgentMetrics()
        self.trusted = load_trusted_keys(settings.trusted_keys)
        self.pipeline = Pipeline(
            self.topics,
            Limits(settings.max_payload_bytes, settings.max_json_depth,
                   settings.contributions_top_k),
        )  # fmt: skip
        self.tracker = AckTracker()
        self.queue: queue.Queue[Any] = queue.Queue(maxsize=settings.queue_capacity)
        self._intake_open = threading.Event()
        self._pending_models: dict[str, tuple[bytes, Any]] = {}
        self._models_lock = threading.Lock()
        self._model_topics = {
            self.topics.model(s.model): name
            for name, s in settings.streams.items()
            if s.model is not None
        }
        self._evictions_seen: dict[str, int] = {}
        for stream, config in settings.streams.items():
            if config.bundle is not None:
                self._install(stream, load_bundle(config.bundle, self.trusted))
        self.status_topic = self.topics.status(settings.node_id, "agent")
        subscriptions = [
            (self.topics.event_filter("raw", stream), 1) for stream in settings.streams
        ]
        subscriptions += [(topic, 1) for topic in self._model_topics]
        self.intake = MqttConnection(
            settings.mqtt,
            settings.mqtt_client_id,
            subscriptions=subscriptions,
            on_message=self._on_message,
            manual_ack=True,
        )
        self.output = MqttConnection(
            settings.mqtt,
            f"{settings.mqtt_client_id}-out",
            will=(self.status_topic, self._status("offline")),
            on_publish=self._on_publish,
            # paho's own window costs a scan of every in-flight message per PUBACK; the
            # worker bounds in-flight publishes itself (see _unacked_limit).
            max_inflight=0,
        )
        self.output.add_connect_listener(self._publish_status)
        self.max_unacked = settings.mqtt.receive_maximum
        self._worker = threading.Thread(target=self._work, name="agent-worker", daemon=True)

    # -- paho network thread ---------------------------------------------------------------------
    def _on_message(self, msg: paho.MQTTMessage) -> None:
        token = (msg.mid, self.intake.generation)
        stream = self._model_topics.get(msg.topic)
        if stream is not None:
            with self._models_lock:
                self._pending_models[stream] = (bytes(msg.payload), token)
            return
        if not self._intake_open.is_set():
            return  # shutting down: left unacked, the broker redelivers after restart
        if msg.dup:
            self.metrics.redelivered.inc()
        item = Inbound(msg.topic, bytes(msg.payload), time.monotonic(), token)
        try:
            self.queue.put_nowait(item)
        except queue.Full:
            # Backpressure: this (intake) network thread waits; nothing is dropped.
            self.metrics.intake_waits.inc()
            self.queue.put(item)

    def _on_publish(self, mid: int, refused: str | None) -> None:
        if refused is not None:
            self.metrics.publish_refused.labels(refused).inc()
            self.tracker.refused(mid)  # the worker publishes it again; the raw stays unacked
            return
        self._complete(self.tracker.published(mid))

    def _complete(self, done: tuple[Any, float] | None) -> None:
        """Ack the raw message whose outputs are now all acknowledged."""
        if done is None:
            return
        token, latency = done
        if token is None:
            return
        if not self.intake.ack(*token):
            self.metrics.stale_acks.inc()
            return
        self.metrics.latency_seconds.observe(latency)

    # -- worker ----------------------------------------------------------------------------------
    def _publish_tracked(self, token: Any, received: float, publishes: list[tuple[str, bytes]],
                         retain: bool = False) -> None:  # fmt: skip
        outputs = [(self.output.publish(t, p, retain=retain), Publish(t, p, retain))
                   for t, p in publishes]  # fmt: skip
        if self.tracker.register(token, received, outputs) and token is not None:
            self.intake.ack(*token)

    def _publish_refused_again(self) -> None:
        for retry in self.tracker.due_retries():
            topic, payload, retain = retry.publish
            mid = self.output.publish(topic, payload, retain=retain)
            self._complete(self.tracker.retried(retry.pending, mid, retry.publish))

    def _unacked_limit(self) -> int:
        """Open raws allowed: our receive maximum, and few enough that their outputs (at
        most two each, plus a status) fit the broker's receive maximum for the output."""
        room = (self.output.server_receive_maximum - 1) // OUTPUTS_PER_RAW
        return max(1, min(self.max_unacked, room))

    def _next_batch(self) -> list[Inbound] | None:
        """Up to batch_max messages, waiting at most batch_wait_ms after the first."""
        try:
            first = self.queue.get(timeout=0.2)
        except queue.Empty:
            return []
        if first is _STOP:
            return None
        batch = [first]
        deadline = time.monotonic() + self.settings.batch_wait_ms / 1000
        while len(batch) < self.settings.batch_max:
            try:
                item = self.queue.get_nowait()
            except queue.Empty:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    item = self.queue.get(timeout=remaining)
                except queue.Empty:
                    break
            if item is _STOP:
                self.queue.put(_STOP)
                break
            batch.append(item)
        return batch

    def _work(self) -> None:
        while True:
            self._apply_model_updates()
            self._publish_refused_again()
            if not self.tracker.wait_below(self._unacked_limit(), timeout_s=0.2):
                continue  # outputs still unacked: hold intake (the queue then fills)
            batch = self._next_batch()
            if batch is None:
                return
            if batch:
                self._handle(batch)
            self.metrics.queue_depth.set(self.queue.qsize())
            self.metrics.unacked.set(len(self.tracker))

    def _handle(self, batch: list[Inbound]) -> None:
        m = self.metrics
        m.batch_size.observe(len(batch))
        outcomes = self.pipeline.process(batch)
        if self.pipeline.last_inference_s:
            m.inference_seconds.observe(self.pipeline.last_inference_s)
        for outcome in outcomes:
            inbound = outcome.inbound
            self._publish_tracked(inbound.token, inbound.received, outcome.publishes)
        self._count(outcomes)

    def _count(self, outcomes: list[Outcome]) -> None:
        """Metrics once per batch: label lookups per message would cost more than scoring."""
        m = self.metrics
        streams: Counter[str] = Counter()
        out: Counter[tuple[str, str]] = Counter()
        reasons: Counter[str] = Counter()
        anomalies: Counter[str] = Counter()
        for outcome in outcomes:
            streams[outcome.stream] += 1
            if outcome.reason is not None:
                reasons[outcome.reason] += 1
                out[outcome.stream, "deadletter"] += 1
            else:
                out[outcome.stream, "scored"] += 1
                if outcome.anomaly:
                    anomalies[outcome.stream] += 1
                    out[outcome.stream, "alerts"] += 1
        for stream, n in streams.items():
            m.messages_in.labels(stream).inc(n)
        for (stream, kind), n in out.items():
            m.messages_out.labels(stream, kind).inc(n)
        for reason, n in reasons.items():
            m.deadletters.labels(reason).inc(n)
        for stream, n in anomalies.items():
            m.anomalies.labels(stream).inc(n)

    # -- models ----------------------------------------------------------------------------------
    def _install(self, stream: str, bundle: Bundle) -> None:
        if bundle.manifest.stream != stream:
            log.warning("bundle %s is for stream %r, serving it on %r",
                        bundle.label, bundle.manifest.stream, stream)  # fmt: skip
        old = self.pipeline.models.get(stream)
        model = StreamModel(bundle, self.settings.max_devices)
        if old is not None and old.manifest.features == model.manifest.features:
            model.windows = old.windows  # same inputs: keep the devices' history
        self.pipeline.models[stream] = model
        self.metrics.model_info.clear()
        for name, m in self.pipeline.models.items():
            info = m.info
            self.metrics.model_info.labels(name, info["name"], str(info["version"]),
                                           info["sha256"]).set(1)  # fmt: skip
        log.info("stream %s: serving %s (sha256 %s…)", stream, bundle.label, bundle.sha256[:12])

    def _apply_model_updates(self) -> None:
        with self._models_lock:
            updates, self._pending_models = self._pending_models, {}
        for stream, (data, token) in updates.items():
            self._consider(stream, data)
            self.intake.ack(*token)
        for stream, model in self.pipeline.models.items():
            evicted = model.windows.evictions
            new = evicted - self._evictions_seen.get(stream, 0)
            if new > 0:
                self.metrics.window_evictions.labels(stream).inc(new)
            self._evictions_seen[stream] = evicted

    def _consider(self, stream: str, data: bytes) -> None:
        if not data:
            return  # a cleared retained message
        if len(data) > self.settings.max_bundle_bytes:
            self.metrics.model_rejected.labels("too_large").inc()
            log.error("model bundle for %s is %d bytes, over the limit", stream, len(data))
            return
        try:
            bundle = verify_bundle(data, self.trusted)
            current = self.pipeline.models.get(stream)
            if current is not None and bundle.manifest.version <= current.manifest.version:
                if bundle.sha256 != current.bundle.sha256:
                    log.info("ignoring %s: not newer than %s", bundle.label, current.bundle.label)
                return
            self._install(stream, bundle)
        except (BundleError, ValueError) as exc:
            self.metrics.model_rejected.labels(type(exc).__name__).inc()
            log.error("refused model bundle for stream %s: %s", stream, exc)
            return
        self._publish_status()

    # -- status and lifecycle --------------------------------------------------------------------
    def _status(self, state: str) -> bytes:
        return dumps(
            {
                "service": "agent",
                "node": self.settings.node_id,
                "state": state,
                "at": time.time(),
                "models": {s: m.info for s, m in self.pipeline.models.items()},
            }
        )

    def _publish_status(self) -> None:
        self._publish_tracked(None, time.monotonic(), [(self.status_topic, self._status("online"))],
                              retain=True)  # fmt: skip

    def start(self) -> None:
        serve_metrics(self.metrics.registry, self.settings.metrics_host, self.settings.metrics_port)
        self._intake_open.set()
        self._worker.start()
        self.output.start()
        self.intake.start()
        sd_notify("READY=1")

    def stop(self) -> None:
        """Stop intake, drain what was taken in, publish offline, disconnect."""
        sd_notify("STOPPING=1")
        self._intake_open.clear()
        self.queue.put(_STOP)
        deadline = time.monotonic() + self.settings.drain_timeout_s
        self._worker.join(timeout=max(0.0, deadline - time.monotonic()))
        if not self.tracker.idle.wait(timeout=max(0.0, deadline - time.monotonic())):
            log.warning("%d raw messages still unacked at shutdown; the broker redelivers them",
                        len(self.tracker))  # fmt: skip
        self.intake.stop()
        self.output.publish_last_status(self.status_topic, self._status("offline"))
        self.output.stop()
