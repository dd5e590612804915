"""From raw MQTT messages to scored events, alerts and dead-letters; no I/O here.

The service feeds it micro-batches from MQTT, ``edgewatch-agent score`` feeds it a file:
both get the same documents. Per stream, a batch's payloads are read at once (natively where
the native reader is built, see ``agent.reading``), vectorised by the bundle's feature spec
and scored in one interpreter call.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from agent.baselines import DeviceBaselines, Prepared
from agent.jsonguard import PayloadRejectedError, parse_object
from agent.reading import PayloadReader, ReadBatch
from agent.rollout import ShadowFigures
from models.bundle import Bundle
from models.features import FloatMatrix, Rejection, WindowState
from models.scoring import Scorer
from plumbing.events import Topics, deadletter_document, dumps, event_id_from

NO_MODEL = "no_model"
TOPIC_CACHE_MAX = 4096  # parsed topics remembered (then forgotten all at once)
BAD_TOPIC = "bad_topic"
SERVICE = "agent"
Rows = np.ndarray[Any, np.dtype[np.floating[Any]]]  # scaled float32, or cleaned float64


@dataclass(slots=True)
class Inbound:
    """One raw message as it came off MQTT."""

    topic: str
    payload: bytes
    received: float = 0.0  # time.monotonic() at receipt
    token: Any = None  # what the service needs to ack it


@dataclass(slots=True)
class Outcome:
    """What one inbound message produced: documents to publish, and what they say."""

    inbound: Inbound
    event_id: str
    stream: str
    publishes: list[tuple[str, bytes]] = field(default_factory=list)
    document: dict[str, Any] | None = None
    reason: str | None = None  # dead-letter reason, when rejected
    anomaly: bool = False


@dataclass(frozen=True, slots=True)
class _Route:
    """A raw event topic's device and stream, and the topics its results go to."""

    device: str
    stream: str
    scored: str
    alerts: str


_UNSEEN = _Route("", "", "", "")  # a topic not parsed yet
_Item = tuple[int, _Route]  # index in the batch, route


class StreamModel:
    """A verified bundle in service: its scorer and, for windowed models, device history.

    A model whose manifest asks for per-device baselines also gets them (in memory; the
    service restores and saves them), bounded by ``baseline_devices`` (default
    ``max_devices``).
    """

    def __init__(
        self,
        bundle: Bundle,
        max_devices: int,
        baseline_devices: int | None = None,
        *,
        native_reader: bool = True,
    ) -> None:
        self.bundle = bundle
        self.manifest = bundle.manifest
        self.scorer = Scorer(bundle)
        spec = self.manifest.features
        self.reader = PayloadReader(spec, native=None if native_reader else False)
        self.windows = WindowState(spec.window, spec.width, max_devices)
        self.baselines: DeviceBaselines | None = None
        if self.manifest.baseline is not None:
            self.baselines = DeviceBaselines(
                self.manifest.baseline,
                spec,
                model_threshold=self.manifest.score.threshold,
                max_devices=baseline_devices or max_devices,
                identity={
                    "model_sha256": self.manifest.model_sha256,
                    "baseline": self.manifest.baseline.model_dump(mode="json"),
                    "fields": [f.model_dump(mode="json") for f in spec.fields],
                },
            )
        self.info = {
            "name": self.manifest.name,
            "version": self.manifest.version,
            "sha256": bundle.sha256,
        }

    def vectorize(self, read: ReadBatch) -> tuple[Rows, list[Rejection]]:
        """Rows of read payloads: scaled, or (with baselines, which scale per device) cleaned."""
        spec = self.manifest.features
        values, rejections = spec.clean(read.raw, read.rejections, copy=False)
        if self.baselines is None:
            return spec.scale(values), rejections
        return values, rejections

    def inputs(self, devices: list[str], rows: Rows) -> tuple[FloatMatrix, Prepared | None]:
        """Model inputs of vectorized rows, through the baselines if the model has them."""
        if self.baselines is None:
            return self.windows.push(devices, rows), None
        prepared = self.baselines.prepare(devices, rows, self.score_windows)
        return self.windowed(devices, prepared), prepared

    def score_windows(self, windows: FloatMatrix) -> FloatMatrix:
        """Scores of model inputs (for a device's warm-up windows)."""
        return self.scorer.score(windows).scores

    def windowed(self, devices: list[str], prepared: Prepared) -> FloatMatrix:
        """Push a prepared batch through the window history, seeding where warm-ups ended."""
        parts, start = [], 0
        for index, device, history in prepared.seeds:
            parts.append(self.windows.push(devices[start : index + 1],
                                           prepared.rows[start : index + 1]))  # fmt: skip
            self.windows.seed(device, history)
            start = index + 1
        parts.append(self.windows.push(devices[start:], prepared.rows[start:]))
        return parts[0] if len(parts) == 1 else np.concatenate(parts)


@dataclass
class Limits:
    max_payload_bytes: int = 64 * 1024
    max_json_depth: int = 32
    contributions_top_k: int = 3


class Pipeline:
    """Scores micro-batches with the current model of each stream."""

    def __init__(self, topics: Topics, limits: Limits) -> None:
        self.topics = topics
        self.limits = limits
        self.models: dict[str, StreamModel] = {}
        self.last_inference_s = 0.0
        self._parsed_topics: dict[str, _Route | None] = {}
        # A second model per stream scoring the same events (a candidate in shadow, or the
        # previous model on probation); its results go under "shadow" in the scored event.
        self.shadows: dict[str, StreamModel] = {}
        self.shadow_figures: dict[str, ShadowFigures] = {}  # of the last batch, per stream

    def process(self, batch: Sequence[Inbound]) -> list[Outcome]:
        """Outcomes in the order of ``batch``; every inbound gets at least one publish."""
        outcomes: list[Outcome | None] = [None] * len(batch)
        valid: dict[str, list[_Item]] = {}
        self.last_inference_s = 0.0
        self.shadow_figures = {}
        routes, models = self._parsed_topics, self.models
        for i, inbound in enumerate(batch):
            route = routes.get(inbound.topic, _UNSEEN)
            if route is _UNSEEN:
                route = self._route(inbound.topic)
            if route is None:
                outcomes[i] = self._reject(inbound, "?", "?", BAD_TOPIC, "not a raw event topic")
                continue
            items = valid.get(route.stream)
            if items is None:
                if route.stream not in models:
                    outcomes[i] = self._unmodelled(inbound, route)
                    continue
                items = valid[route.stream] = []
            items.append((i, route))
        for stream, items in valid.items():
            self._score_stream(batch, stream, items, outcomes)
        return [o for o in outcomes if o is not None]

    def _route(self, topic: str) -> _Route | None:
        """Where a raw topic's results go; None when it is not a raw event topic. Routes are
        remembered: a box has few devices, each sending many events."""
        cache = self._parsed_topics
        if len(cache) >= TOPIC_CACHE_MAX:
            cache.clear()
        parts = self.topics.parse(topic)
        route = None
        if parts is not None and parts.kind == "raw":
            device, stream = parts.device, parts.stream
            route = _Route(device, stream, self.topics.event(device, "scored", stream),
                           self.topics.event(device, "alerts", stream))  # fmt: skip
        cache[topic] = route
        return route

    def _score_stream(
        self,
        batch: Sequence[Inbound],
        stream: str,
        items: list[_Item],
        outcomes: list[Outcome | None],
    ) -> None:
        """Read, score and build the events of one stream's items (into ``outcomes``)."""
        model = self.models[stream]
        payloads = [batch[i].payload for i, _ in items]
        read = self._read(model, payloads)
        event_ids, stamps = read.event_ids, read.ts
        rows, rejections = model.vectorize(read)
        if rejections:
            rejected = {r.index: r for r in rejections}
            for j, rejection in rejected.items():
                i, route = items[j]
                outcomes[i] = self._reject(batch[i], route.device, stream, rejection.reason,
                                           rejection.detail, event_ids[j])  # fmt: skip
            keep = [j for j in range(len(items)) if j not in rejected]
            if not keep:
                return
            items, rows = [items[j] for j in keep], rows[keep]
            payloads = [payloads[j] for j in keep]
            event_ids, stamps = [event_ids[j] for j in keep], [stamps[j] for j in keep]
        started = time.perf_counter()
        inputs, prepared = model.inputs([item[1].device for item in items], rows)
        scaled = rows if prepared is None else prepared.rows
        scored = model.scorer.score(inputs)
        serving_s = time.perf_counter() - started
        self.last_inference_s += serving_s
        contributions = model.scorer.contributions(scored.errors, self.limits.contributions_top_k)
        threshold = model.manifest.score.threshold
        # Python floats and bools for the whole batch at once, not value by value.
        exact = scored.scores.astype(np.float64)
        scores = np.round(exact, 6).tolist()
        if prepared is None:
            anomalies = (exact >= threshold).tolist()
        else:  # each device's own threshold; a warming device never alerts
            warming, thresholds = prepared.warming, prepared.thresholds.tolist()
            anomalies = ((exact >= prepared.thresholds) & ~np.array(warming, bool)).tolist()
        shadow = self._shadow(stream, items, payloads, scaled, exact,
                              serving_alerts=anomalies, serving_s=serving_s)  # fmt: skip
        info, now = model.info, time.time()
        for n, (i, route) in enumerate(items):
            inbound = batch[i]
            anomaly = anomalies[n]
            event_id = event_id_from(inbound.topic, inbound.payload, event_ids[n])
            event = {
                "event_id": event_id,
                "device": route.device,
                "stream": stream,
                "ts": stamps[n],
                "scored_at": now,
                "model": info,
                "score": scores[n],
                "threshold": threshold,
                "anomaly": anomaly,
                "contributions": contributions[n],
            }
            if prepared is not None:
                event["threshold"] = thresholds[n]
                event["warming_up"] = warming[n]
            if shadow is not None and shadow[n] is not None:
                event["shadow"] = shadow[n]
            body = dumps(event)
            publishes = [(route.scored, body), (route.alerts, body)] if anomaly else [
                (route.scored, body)]  # fmt: skip
            outcomes[i] = Outcome(inbound, event_id, stream, publishes, event, None, anomaly)

    def _shadow(
        self,
        stream: str,
        items: list[_Item],
        payloads: list[bytes],
        rows: Rows,
        serving: npt.NDArray[np.float64],
        *,
        serving_alerts: list[bool],
        serving_s: float,
    ) -> list[dict[str, Any] | None] | None:
        """The stream's second model on the rows the serving one scored; figures recorded.

        It reuses the serving model's rows when both read the same features without
        baselines, and reads the payloads itself otherwise.
        """
        other = self.shadows.get(stream)
        if other is None:
            return None
        started = time.perf_counter()
        figures = self.shadow_figures.setdefault(stream, ShadowFigures())
        served = self.models[stream]
        try:
            ok, own = list(range(len(items))), rows
            if (other.manifest.features != served.manifest.features
                    or other.baselines is not None or served.baselines is not None):  # fmt: skip
                own, rejections = other.vectorize(self._read(other, payloads))
                refused = {r.index for r in rejections}
                ok = [j for j in ok if j not in refused]
                own = own[ok]
            inputs, prepared = other.inputs([items[j][1].device for j in ok], own)
            values = other.scorer.score(inputs).scores.astype(np.float64)
        except Exception:  # noqa: BLE001 - a model under test must never stop serving
            figures.shadow_errors += len(items)
            figures.shadow_s += time.perf_counter() - started
            return None
        figures.shadow_s += time.perf_counter() - started  # inputs and inference, as serving_s
        if prepared is None:
            alerts = values >= other.manifest.score.threshold
        else:  # its own per-device thresholds; a warming device never alerts
            alerts = (values >= prepared.thresholds) & ~np.array(prepared.warming, bool)
        paired = serving[ok]
        figures.events += len(ok)
        figures.shadow_errors += len(items) - len(ok)
        figures.serving_alerts += sum(serving_alerts[j] for j in ok)
        figures.shadow_alerts += int(alerts.sum())
        figures.serving_s += serving_s
        figures.serving_scores = np.concatenate((figures.serving_scores, paired))
        figures.shadow_scores = np.concatenate((figures.shadow_scores, values))
        out: list[dict[str, Any] | None] = [None] * len(items)
        model = {"name": other.manifest.name, "version": other.manifest.version}
        for j, score, anomaly in zip(ok, np.round(values, 6).tolist(), alerts.tolist(),
                                     strict=True):  # fmt: skip
            out[j] = {"model": model, "score": score, "anomaly": anomaly}
        return out

    def _read(self, model: StreamModel, payloads: list[bytes]) -> ReadBatch:
        limits = self.limits
        return model.reader.read(payloads, max_bytes=limits.max_payload_bytes,
                                 max_depth=limits.max_json_depth)  # fmt: skip

    def _unmodelled(self, inbound: Inbound, route: _Route) -> Outcome:
        """The dead-letter of a payload for a stream without a model (or an unparseable one)."""
        limits = self.limits
        try:
            document = parse_object(inbound.payload, max_bytes=limits.max_payload_bytes,
                                    max_depth=limits.max_json_depth)  # fmt: skip
        except PayloadRejectedError as exc:
            return self._reject(inbound, route.device, route.stream, exc.reason, exc.detail)
        return self._reject(inbound, route.device, route.stream, NO_MODEL,
                            "no model loaded for stream", document.get("event_id"))  # fmt: skip

    def _reject(  # noqa: PLR0917 - a private helper with one call shape
        self,
        inbound: Inbound,
        device: str,
        stream: str,
        reason: str,
        detail: str,
        own_id: object = None,
    ) -> Outcome:
        """A dead-letter outcome; ``own_id`` is the payload's "event_id" value, if read."""
        event_id = event_id_from(inbound.topic, inbound.payload, own_id)
        entry = deadletter_document(
            event_id=event_id,
            topic=inbound.topic,
            reason=reason,
            detail=detail,
            payload=inbound.payload,
            service=SERVICE,
        )
        topic = self.topics.event(device if device != "?" else "unknown", "deadletter",
                                  stream if stream != "?" else "unknown")  # fmt: skip
        return Outcome(inbound, event_id, stream, [(topic, dumps(entry))], entry, reason=reason)
