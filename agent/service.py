"""The agent service: MQTT intake → micro-batches → pipeline → QoS 1 publishes → acks.

Two MQTT connections: ``intake`` subscribes with manual acks, ``output`` publishes. Intake's
network thread only enqueues (raw messages into a bounded queue, model bundles into a
latest-wins slot) and blocks when the queue is full; output's network thread handles the
PUBACKs that complete raw messages, so a blocked intake can never stall them. One worker
drains batches, scores and publishes, and waits while ``mqtt.receive_maximum`` raw messages
are unacked (the broker's flow control is not relied on alone). A raw message is acked when
the broker acknowledged everything it produced.

Model rollout is the worker's too, between two batches, so a swap never splits a batch:
every event is scored by exactly one serving model. Bundles (``{prefix}/models/{model}``)
and signed instructions (``{prefix}/models/{model}--serve``) wait in a latest-wins slot per
stream; the worker verifies them, hands them to the stream's :class:`agent.rollout.Rollout`
(which decides, without I/O) and carries out its decisions: a candidate joins the pipeline
as the stream's shadow model, a promotion or rollback swaps the serving model, every state
change is written to the :class:`agent.store.ModelStore` before it is announced (retained
status, and a transition on ``{prefix}/{node}/rollout/{stream}``). After each batch the
pipeline's two-model figures go to the rollout, which may decide again.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
import paho.mqtt.client as paho

from agent.acks import AckTracker, Publish
from agent.baselines import BaselineKeeper
from agent.metrics import AgentMetrics
from agent.pipeline import Inbound, Limits, Outcome, Pipeline, StreamModel
from agent.rollout import Decision, Phase, Rollout, Version
from agent.settings import AgentSettings, StreamSettings
from agent.store import ModelStore
from models.bundle import Bundle, BundleError, load_bundle, load_trusted_keys, verify_bundle
from models.instructions import (
    InstructionError,
    ServeInstruction,
    instruction_key,
    verify_instruction,
)
from plumbing.errors import EdgewatchError
from plumbing.events import Topics, dumps
from plumbing.lifecycle import sd_notify
from plumbing.metrics import serve_metrics
from plumbing.mqtt import MqttConnection
from plumbing.paho_io import BufferedClient
from plumbing.paho_io import Publish as Received

log = logging.getLogger(__name__)

_STOP = object()
OUTPUTS_PER_RAW = 2  # a scored event and an alert (or one dead-letter)


@dataclass
class _Stream:
    """The service's side of one stream's rollout: what the state machine does not hold."""

    name: str  # the model name (bundle files, instructions)
    rollout: Rollout
    candidate: tuple[Bundle, bytes] | None = None  # in shadow, stored once promoted
    pending: tuple[Bundle, bytes] | None = None  # offered on probation, offered again after
    instruction_at: float = 0.0  # issued_at of the last instruction followed
    last_ignored: Decision | None = None
    last_transition: dict[str, Any] | None = None


def _version(bundle: Bundle) -> Version:
    return Version(bundle.manifest.version, bundle.sha256)


def _number(version: Version | None) -> int | None:
    return None if version is None else version.number


def _overrides(bundle: Bundle) -> dict[str, Any]:
    rollout = bundle.manifest.rollout
    return {} if rollout is None else rollout.rules.model_dump()


class AgentService:
    def __init__(self, settings: AgentSettings) -> None:
        self.settings = settings
        self.topics = Topics(settings.mqtt.topic_prefix)
        self.metrics = AgentMetrics()
        self.baselines = BaselineKeeper(settings.baselines, self.metrics)
        self.trusted = load_trusted_keys(settings.trusted_keys)
        self.pipeline = Pipeline(
            self.topics,
            Limits(settings.max_payload_bytes, settings.max_json_depth,
                   settings.contributions_top_k),
        )  # fmt: skip
        self.tracker = AckTracker()
        self.queue: queue.Queue[Any] = queue.Queue(maxsize=settings.queue_capacity)
        self._intake_open = threading.Event()
        # Bundles and instructions by (kind, stream), latest wins, applied between batches.
        self._pending_models: dict[tuple[str, str], tuple[bytes, Any]] = {}
        self._models_lock = threading.Lock()
        self._model_topics: dict[str, tuple[str, str]] = {}
        for name, s in settings.streams.items():
            if s.model is not None:
                self._model_topics[self.topics.model(s.model)] = ("bundle", name)
                self._model_topics[self.topics.model(instruction_key(s.model))] = (
                    "instruction", name)  # fmt: skip
        self._evictions_seen: dict[str, int] = {}
        self.rules = settings.rollout.rules.rules()
        self.store = ModelStore(settings.rollout.state_dir, settings.rollout.keep_bundles,
                                self.trusted)  # fmt: skip
        if settings.rollout.state_dir is None:
            log.warning("rollout.state_dir is unset: promotions are not kept across restarts")
        self.rollouts: dict[str, _Stream] = {}
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
        if isinstance(self.intake.client, BufferedClient):
            # paho builds a message object and properties per PUBLISH; the buffered client
            # decodes whole QoS 1 PUBLISH packets in one loop (the bridge's intake too).
            self.intake.client.on_publish_batch = self._on_publish_batch
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
        for stream, config in settings.streams.items():
            self._restore(stream, config)  # may announce: paho queues until connected
        self.max_unacked = settings.mqtt.receive_maximum
        self._worker = threading.Thread(target=self._work, name="agent-worker", daemon=True)

    # -- paho network thread ---------------------------------------------------------------------
    def _on_publish_batch(self, batch: list[Received]) -> None:
        """QoS 1 PUBLISH packets decoded in bulk from the intake's read buffer."""
        generation = self.intake.generation
        for topic, payload, mid, dup in batch:
            self._take_in(topic, payload, (mid, generation), dup)

    def _on_message(self, msg: paho.MQTTMessage) -> None:
        """A message paho decoded itself (one not wholly in the buffer, or not QoS 1)."""
        self._take_in(msg.topic, bytes(msg.payload), (msg.mid, self.intake.generation), msg.dup)

    def _take_in(self, topic: str, payload: bytes, token: tuple[int, int], dup: bool) -> None:
        control = self._model_topics.get(topic)
        if control is not None:
            with self._models_lock:
                self._pending_models[control] = (payload, token)
            return
        if not self._intake_open.is_set():
            return  # shutting down: left unacked, the broker redelivers after restart
        if dup:
            self.metrics.redelivered.inc()
        item = Inbound(topic, payload, time.monotonic(), token)
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
            if self.baselines.tend(time.monotonic()):
                self._publish_status()
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
        if self.pipeline.shadow_figures:
            self._observe()

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

    # -- models and rollout (worker thread, between batches) ------------------------------------
    def _restore(self, stream: str, config: StreamSettings) -> None:
        """Serve what was promoted before a restart; else the configured file (a configured
        file newer than that becomes a candidate, like any newer release)."""
        keep = self.settings.rollout.keep_bundles
        configured = None
        if config.bundle is not None:
            bundle = load_bundle(config.bundle, self.trusted)
            configured = (bundle, config.bundle.read_bytes())
        state = self.store.load_state(stream) or {}
        name = state.get("model") or config.model or (configured[0].manifest.name
                                                      if configured else stream)  # fmt: skip
        entry = _Stream(name, Rollout(self.rules, max_previous=keep - 1))
        self.rollouts[stream] = entry
        active = state.get("active")
        stored = self.store.get(name, active["number"], active["sha256"]) if active else None
        if active and stored is None:
            log.error("stream %s: stored v%s does not verify; falling back", stream,
                      active["number"])  # fmt: skip
        if stored is not None:
            bundle, _ = stored
            entry.rollout = Rollout(
                self.rules, active=_version(bundle), max_previous=keep - 1,
                previous=[Version(v["number"], v["sha256"]) for v in state.get("previous", [])],
                rolled_back=state.get("rolled_back", ()), rejected=state.get("rejected", ()),
            )  # fmt: skip
            entry.instruction_at = float(state.get("instruction_at", 0.0))
            self._serve(stream, self._model(bundle))
            log.info("stream %s: serving %s as promoted before (not the configured file)",
                     stream, bundle.label)  # fmt: skip
            if state.get("probation"):
                self._resume_probation(stream, entry, bundle)
        active_now = entry.rollout.active
        if configured is None:
            return
        if active_now is None or configured[0].manifest.version > active_now.number:
            self._offer(stream, *configured)  # a newer file (say, a package upgrade): shadowed
        elif configured[0].sha256 != active_now.sha256:
            # Boxes only ever move to a higher version: a rebuilt model shipped under a
            # version number already served here would otherwise be ignored in silence.
            log.warning("stream %s: %s is not newer than the %s serving and differs from it; "
                        "ignored (a release needs a higher version)", stream,
                        configured[0].label, active_now)  # fmt: skip

    def _resume_probation(self, stream: str, entry: _Stream, bundle: Bundle) -> None:
        reference = entry.rollout.previous[0] if entry.rollout.previous else None
        found = self.store.get(entry.name, *reference) if reference else None
        if found is None:
            log.warning("stream %s: no previous bundle to resume probation with", stream)
            return
        entry.rollout.resume_probation(time.monotonic(), _overrides(bundle))
        self._warmed(self.pipeline.models[stream])  # both are timed from the first batch on
        self.pipeline.shadows[stream] = self._warmed(self._model(found[0]))

    def _serve(self, stream: str, model: StreamModel) -> None:
        """Make ``model`` the one that serves ``stream`` (between batches)."""
        bundle = model.bundle
        if bundle.manifest.stream != stream:
            log.warning("bundle %s is for stream %r, serving it on %r",
                        bundle.label, bundle.manifest.stream, stream)  # fmt: skip
        old = self.pipeline.models.get(stream)
        if (
            old is not None
            and old.manifest.features == model.manifest.features
            and not len(model.windows)
        ):
            model.windows = old.windows  # same inputs, no history of its own: keep the devices'
        self.pipeline.models[stream] = model
        self.baselines.attach(stream, model.baselines)
        self.metrics.model_info.clear()
        for name, m in self.pipeline.models.items():
            info = m.info
            self.metrics.model_info.labels(name, info["name"], str(info["version"]),
                                           info["sha256"]).set(1)  # fmt: skip
        reader = "native" if model.reader.native else "Python"
        log.info("stream %s: serving %s (sha256 %s…, %s payload reader)", stream, bundle.label,
                 bundle.sha256[:12], reader)  # fmt: skip

    def _model(self, bundle: Bundle) -> StreamModel:
        settings = self.settings
        return StreamModel(bundle, settings.max_devices, native_reader=settings.native_reader)

    def _warmed(self, model: StreamModel) -> StreamModel:
        """Run the model once at the batch sizes the agent uses, so that its interpreters
        exist before its batches are timed (allocating one took ~50 ms on a busy box)."""
        width = model.manifest.features.input_width
        for rows in sorted({1, self.settings.batch_max}):
            model.scorer.score(np.zeros((rows, width), dtype=np.float32))
        return model

    def _apply_model_updates(self) -> None:
        with self._models_lock:
            updates, self._pending_models = self._pending_models, {}
        for (kind, stream), (data, token) in updates.items():
            if kind == "bundle":
                self._consider(stream, data)
            else:
                self._instruction(stream, data)
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
        except (BundleError, ValueError) as exc:
            self.metrics.model_rejected.labels(type(exc).__name__).inc()
            log.error("refused model bundle for stream %s: %s", stream, exc)
            return
        self._offer(stream, bundle, data)

    def _offer(self, stream: str, bundle: Bundle, data: bytes) -> None:
        """A verified bundle: for this box's cohort, the rollout decides what happens."""
        entry = self.rollouts[stream]
        rollout = bundle.manifest.rollout
        cohort = rollout.cohort if rollout is not None else None
        if cohort is not None and not cohort.includes(self.settings.node_id):
            why = f"node not in the release's cohort ({cohort.model_dump(exclude_none=True)})"
            figures = {"cohort": cohort.model_dump(mode="json", exclude_none=True)}
            active = entry.rollout.active
            self._carry_out(stream, Decision("ignored", active, _version(bundle), why, figures))
            return
        decision = entry.rollout.offer(_version(bundle), time.monotonic(), _overrides(bundle))
        if decision.kind == "deferred":
            entry.pending = (bundle, data)
        self._carry_out(stream, decision, (bundle, data))

    def _observe(self) -> None:
        """Feed the last batch's two-model figures to each stream's rollout."""
        for stream, figures in self.pipeline.shadow_figures.items():
            self.metrics.shadow_events.labels(stream).inc(figures.events)
            if figures.shadow_errors:
                self.metrics.shadow_errors.labels(stream).inc(figures.shadow_errors)
            decision = self.rollouts[stream].rollout.observe(figures, time.monotonic())
            if decision is not None:
                self._carry_out(stream, decision)

    def _carry_out(self, stream: str, decision: Decision,
                   offered: tuple[Bundle, bytes] | None = None) -> None:  # fmt: skip
        """Do what the rollout decided (swaps happen here, between two batches)."""
        entry, kind, pipeline = self.rollouts[stream], decision.kind, self.pipeline
        if kind == "installed" and offered is not None:
            self.store.put(*offered)
            self._serve(stream, self._model(offered[0]))
        elif kind == "shadow_started" and offered is not None:
            try:
                pipeline.shadows[stream] = self._warmed(self._model(offered[0]))
            except (EdgewatchError, ValueError, RuntimeError) as exc:  # LiteRT raises the latter
                pipeline.shadows.pop(stream, None)
                decision = entry.rollout.drop_candidate(f"does not load: {exc}")
            else:
                entry.candidate = offered
        elif kind == "promoted":
            new, old = pipeline.shadows.pop(stream), pipeline.models[stream]
            if entry.candidate is not None:
                self.store.put(*entry.candidate)
            entry.candidate = None
            self._serve(stream, new)
            if entry.rollout.beside is not None:
                pipeline.shadows[stream] = old  # the reference while on probation
        elif kind == "rolled_back":
            self._serve(stream, pipeline.shadows.pop(stream))
        elif kind in ("rejected", "probation_passed"):
            pipeline.shadows.pop(stream, None)
            entry.candidate = None
        self._announce(stream, decision)
        if entry.rollout.phase is Phase.SERVING and entry.pending is not None:
            pending, entry.pending = entry.pending, None
            self._offer(stream, *pending)

    def _instruction(self, stream: str, data: bytes) -> None:
        """A "serve version V" instruction from the centre, verified here."""
        if not data:
            return
        try:
            instruction = verify_instruction(data, self.trusted)
        except InstructionError as exc:
            self._refuse(stream, exc.reason, str(exc))
            return
        if self._to_follow(stream, instruction):
            self._follow(stream, instruction)

    def _to_follow(self, stream: str, instruction: ServeInstruction) -> bool:
        entry = self.rollouts[stream]
        if instruction.model != entry.name:
            self._refuse(stream, "other_model", f"for model {instruction.model}, not {entry.name}")
            return False
        if instruction.issued_at < entry.instruction_at:
            self._refuse(stream, "stale", "older than the last instruction followed")
            return False
        # Not for this box, or the retained instruction seen again: nothing to do.
        fresh = instruction.issued_at != entry.instruction_at
        return fresh and instruction.applies_to(self.settings.node_id)

    def _follow(self, stream: str, instruction: ServeInstruction) -> None:
        entry = self.rollouts[stream]
        entry.instruction_at = instruction.issued_at
        found = self._find(stream, instruction.version)
        if found is None:
            why = f"v{instruction.version} is not in the local store"
            self._announce(stream, Decision("instruction_failed", entry.rollout.active, None, why))
            return
        decision = entry.rollout.instruct(_version(found[0]), instruction.reason)
        if decision.kind != "ignored":
            self.store.put(*found)
            self.pipeline.shadows.pop(stream, None)
            entry.candidate = entry.pending = None
            self._serve(stream, self._model(found[0]))
        self._announce(stream, decision)

    def _find(self, stream: str, version: int) -> tuple[Bundle, bytes] | None:
        entry = self.rollouts[stream]
        if entry.candidate is not None and entry.candidate[0].manifest.version == version:
            return entry.candidate
        return self.store.get(entry.name, version)

    def _refuse(self, stream: str, reason: str, detail: str) -> None:
        self.metrics.instructions_refused.labels(reason).inc()
        log.error("refused instruction for stream %s: %s", stream, detail)
        active = self.rollouts[stream].rollout.active
        self._announce(stream, Decision("instruction_refused", active, None, detail,
                                        {"refusal": reason}))  # fmt: skip

    def _announce(self, stream: str, decision: Decision) -> None:
        """Persist the state if it changed, publish the transition and the status."""
        entry = self.rollouts[stream]
        if decision.quiet or (decision.kind == "ignored" and decision == entry.last_ignored):
            return
        if decision.kind == "ignored" and "cohort" not in decision.figures:
            # Already decided (rejected, rolled back, not newer): the retained bundle comes
            # again on every reconnect; logged, not announced over the decision itself.
            log.info("stream %s: ignored %s: %s", stream, decision.to_version, decision.reason)
            entry.last_ignored = decision
            return
        if decision.kind == "ignored":
            entry.last_ignored = decision  # announced once per process, not per reconnect
        else:
            state = {"model": entry.name, "instruction_at": entry.instruction_at,
                     **entry.rollout.state()}  # fmt: skip
            self.store.save_state(stream, entry.name, state)
        self.metrics.rollout_transitions.labels(stream, decision.kind).inc()
        document = {
            "node": self.settings.node_id,
            "stream": stream,
            "model": entry.name,
            "kind": decision.kind,
            "from_version": _number(decision.from_version),
            "to_version": _number(decision.to_version),
            "reason": decision.reason,
            "figures": decision.figures,
            "at": time.time(),
            **self._rollout_view(stream),
        }
        kept = ("kind", "from_version", "to_version", "reason", "at")
        entry.last_transition = {k: document[k] for k in kept}
        log.info("stream %s: %s %s -> %s: %s", stream, decision.kind, decision.from_version,
                 decision.to_version, decision.reason)  # fmt: skip
        topic = self.topics.rollout(self.settings.node_id, stream)
        self._publish_tracked(None, time.monotonic(), [(topic, dumps(document))])
        self._publish_status()

    def _rollout_view(self, stream: str) -> dict[str, Any]:
        rollout = self.rollouts[stream].rollout
        return {
            "state": rollout.phase.value,
            "active": _number(rollout.active),
            "candidate": _number(rollout.shadow_candidate),
            "previous": [v.number for v in rollout.previous],
        }

    # -- status and lifecycle --------------------------------------------------------------------
    def _status(self, state: str) -> bytes:
        return dumps(
            {
                "service": "agent",
                "node": self.settings.node_id,
                "state": state,
                "at": time.time(),
                "models": {s: m.info for s, m in self.pipeline.models.items()},
                "baselines": self.baselines.summary(),
                "rollout": {
                    stream: {
                        "model": entry.name,
                        **self._rollout_view(stream),
                        "rolled_back": sorted(entry.rollout.rolled_back),
                        "rejected": sorted(entry.rollout.rejected),
                        "last_transition": entry.last_transition,
                    }
                    for stream, entry in self.rollouts.items()
                },
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
        self.baselines.save()  # the worker is gone: baselines learned in its last second
        self.intake.stop()
        self.output.publish_last_status(self.status_topic, self._status("offline"))
        self.output.stop()
