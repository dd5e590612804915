"""Per-device baselines: each device's own scaling and alert threshold, learned on the box.

A model whose manifest has a ``baseline`` (:class:`models.features.BaselineSpec`) is served
with one :class:`DeviceBaselines`. The core does no I/O and runs on the worker thread only:

- A device's first ``warmup_rows`` readings (cleaned, unscaled) are buffered. While it warms
  up its readings are scaled with the spec's own parameters, scored, published with
  ``warming_up: true`` and never alert.
- At the last warm-up reading the device's centers and scales are fitted on the buffer (the
  spec's rule, :func:`models.features.fit_scaling`), the buffer is scaled that way and cut
  into windows, the model scores them once, and the device's threshold is ``margin`` × their
  ``quantile`` (or the manifest's threshold). The buffer is dropped; its last ``window``
  scaled rows become the device's window history, so every later window equals the one
  :func:`models.features.sliding_windows` makes over the device-scaled series.
- Bounds: at most ``max_devices`` devices (warming or learned); beyond, the least recently
  seen one is forgotten and ``evictions`` counts it. A warming device holds
  ``warmup_rows`` × features float64 values (400 × 8 × 8 B = 25.6 KB); a learned one two
  vectors and a float.
- :meth:`DeviceBaselines.reset` forgets a device: its next reading starts a new warm-up.

Persistence is a thin shell around that core: :class:`BaselineStore` keeps one JSON document
per stream (learned devices only; a device that was warming at a restart starts again),
written atomically (temporary file, fsync, rename, directory fsync) by the service whenever
a baseline was learned, reset or evicted. A document is loaded only by a model with the
same model digest, baseline spec and fields: a new model learns every device again. Reset
requests are files an operator drops into the store's ``requests/`` directory
(``edgewatch-agent baseline reset``); the service applies and deletes them, and a request
written while the service is stopped is applied at its next start.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from agent.store import write_atomically
from models.features import BaselineSpec, FeatureSpec, FloatMatrix, sliding_windows
from plumbing.errors import EdgewatchError

if TYPE_CHECKING:
    from agent.metrics import AgentMetrics
    from agent.settings import BaselineSettings

log = logging.getLogger(__name__)

FORMAT = 1
REQUESTS = "requests"
ScoreWindows = Callable[[FloatMatrix], npt.NDArray[np.float32]]
Floats = npt.NDArray[np.float64]


class BaselineStoreError(EdgewatchError):
    """A baseline document or request that cannot be written."""


@dataclass(slots=True)
class DeviceBaseline:
    """What a device's warm-up taught: its scaling and its alert threshold."""

    center: Floats
    scale: Floats
    threshold: float
    learned_at: float


@dataclass(slots=True)
class _Warming:
    buffer: Floats
    count: int = 0


@dataclass(slots=True)
class Prepared:
    """A batch's model rows (not yet windowed) and what the baselines say about each row.

    ``seeds``: (row index, device, rows) — once row ``index`` is in its window, ``device``'s
    window history must become ``rows`` (the device just finished its warm-up).
    """

    rows: FloatMatrix
    warming: list[bool]
    thresholds: Floats
    seeds: list[tuple[int, str, FloatMatrix]] = field(default_factory=list)


class DeviceBaselines:
    """Baselines of one stream's devices for one model (see the module docstring)."""

    def __init__(
        self,
        spec: BaselineSpec,
        features: FeatureSpec,
        *,
        model_threshold: float,
        max_devices: int,
        identity: dict[str, Any],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.spec = spec
        self.features = features
        self.model_threshold = model_threshold
        self.max_devices = max_devices
        # What a persisted document must match to be loaded (JSON-shaped, compared as such).
        self.identity = json.loads(json.dumps(identity))
        self.clock = clock
        self.evictions = 0
        self.resets = 0
        self.learned = 0
        self.changed = False  # a learned baseline appeared or went since the last save
        self.attached = False  # restored from the store once, when it first served
        self._devices: OrderedDict[str, DeviceBaseline | _Warming] = OrderedDict()
        self._centers = features.centers
        self._scales = features.scales

    def __len__(self) -> int:
        return len(self._devices)

    def prepare(
        self, devices: Sequence[str], values: npt.NDArray[Any], score_windows: ScoreWindows
    ) -> Prepared:
        """Scale a batch of cleaned readings (rows in arrival order), learning as they come."""
        n, width = values.shape
        centers = np.empty((n, width))
        scales = np.empty((n, width))
        thresholds = np.full(n, self.model_threshold, dtype=np.float64)
        warming = [False] * n
        seeds: list[tuple[int, str, FloatMatrix]] = []
        for i, device in enumerate(devices):
            state = self._touch(device)
            if isinstance(state, DeviceBaseline):
                centers[i], scales[i], thresholds[i] = state.center, state.scale, state.threshold
                continue
            warming[i] = True
            centers[i], scales[i] = self._centers, self._scales
            state.buffer[state.count] = values[i]
            state.count += 1
            if state.count == self.spec.warmup_rows:
                baseline, history = self._learn(state.buffer, score_windows)
                self._devices[device] = baseline
                seeds.append((i, device, history))
        rows = self.features.scale(values, centers, scales)
        return Prepared(rows, warming, thresholds, seeds)

    def _touch(self, device: str) -> DeviceBaseline | _Warming:
        state = self._devices.get(device)
        if state is not None:
            self._devices.move_to_end(device)
            return state
        state = _Warming(np.empty((self.spec.warmup_rows, self.features.width)))
        self._devices[device] = state
        if len(self._devices) > self.max_devices:
            _, evicted = self._devices.popitem(last=False)
            self.evictions += 1
            self.changed = self.changed or isinstance(evicted, DeviceBaseline)
        return state

    def _learn(
        self, buffer: Floats, score_windows: ScoreWindows
    ) -> tuple[DeviceBaseline, FloatMatrix]:
        center, scale = self.spec.device_scaling(self.features, buffer)
        scaled = self.features.scale(buffer, center, scale)
        if self.spec.threshold == "model":
            threshold = self.model_threshold
        else:
            scores = score_windows(sliding_windows(scaled, self.features.window))
            threshold = self.spec.device_threshold(scores, self.model_threshold)
        self.learned += 1
        self.changed = True
        return DeviceBaseline(center, scale, threshold, self.clock()), scaled

    def reset(self, device: str) -> bool:
        """Forget ``device``'s baseline (or warm-up); True if it had one."""
        state = self._devices.pop(device, None)
        if state is None:
            return False
        self.resets += 1
        self.changed = True
        return True

    def baseline(self, device: str) -> DeviceBaseline | None:
        state = self._devices.get(device)
        return state if isinstance(state, DeviceBaseline) else None

    def warming_devices(self) -> int:
        return sum(1 for s in self._devices.values() if isinstance(s, _Warming))

    def summary(self) -> dict[str, int]:
        warming = self.warming_devices()
        return {
            "learned": len(self._devices) - warming,
            "warming": warming,
            "warmup_rows": self.spec.warmup_rows,
            "max_devices": self.max_devices,
            "evictions": self.evictions,
            "resets": self.resets,
        }

    # -- documents (the store's content) ---------------------------------------------------------
    def to_document(self) -> dict[str, Any]:
        """Learned baselines, least recently seen first, with what they are valid for."""
        devices = {
            name: {
                "center": state.center.tolist(),
                "scale": state.scale.tolist(),
                "threshold": state.threshold,
                "learned_at": state.learned_at,
            }
            for name, state in self._devices.items()
            if isinstance(state, DeviceBaseline)
        }
        return {"format": FORMAT, "identity": self.identity, "devices": devices}

    def restore(self, document: dict[str, Any]) -> str | None:
        """Load learned baselines from a document; the reason it was not loaded, or None."""
        if document.get("format") != FORMAT:
            return f"format {document.get('format')!r}, expected {FORMAT}"
        if document.get("identity") != self.identity:
            return "written for another model, baseline spec or field list"
        width = self.features.width
        try:
            loaded = [
                (str(name), DeviceBaseline(
                    np.array(entry["center"], dtype=np.float64),
                    np.array(entry["scale"], dtype=np.float64),
                    float(entry["threshold"]),
                    float(entry["learned_at"]),
                ))
                for name, entry in document["devices"].items()
            ]  # fmt: skip
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            return f"unreadable entry: {exc!r}"
        if any(b.center.shape != (width,) or b.scale.shape != (width,) for _, b in loaded):
            return f"an entry does not have {width} features"
        for name, baseline in loaded[-self.max_devices :]:
            self._devices[name] = baseline
        return None


class BaselineStore:
    """Baseline documents (``{stream}.json``) and reset requests in one directory."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.requests = directory / REQUESTS
        self._undeletable: set[str] = set()  # requests applied once that could not be removed

    def path(self, stream: str) -> Path:
        return self.directory / f"{stream}.json"

    def load(self, stream: str) -> dict[str, Any] | None:
        """The stream's document, or None if there is none or it cannot be read (logged)."""
        path = self.path(stream)
        try:
            document = json.loads(path.read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.error("baselines %s unreadable, devices learn again: %s", path, exc)
            return None
        if not isinstance(document, dict):
            log.error("baselines %s is not a JSON object, devices learn again", path)
            return None
        return document

    def save(self, stream: str, document: dict[str, Any]) -> None:
        _write_atomically(self.path(stream), json.dumps(document).encode())

    def request_reset(self, device: str, stream: str | None = None) -> Path:
        """Ask the service to forget ``device`` (on ``stream``, or on every stream)."""
        body = json.dumps({"device": device, "stream": stream}).encode()
        path = self.requests / f"{time.time_ns()}-{os.getpid()}.json"
        _write_atomically(path, body)
        return path

    def take_requests(self) -> list[tuple[str, str | None]]:
        """Pending reset requests as (device, stream or None), oldest first; deletes them."""
        try:
            paths = sorted(self.requests.glob("*.json"))
        except OSError:
            return []
        out = []
        for path in paths:
            if path.name in self._undeletable:
                continue
            try:
                request = json.loads(path.read_bytes())
                out.append((str(request["device"]), request.get("stream")))
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.error("ignoring unreadable baseline request %s: %r", path, exc)
            try:
                path.unlink(missing_ok=True)
            except OSError as exc:  # e.g. written by another user: applied once, not again
                self._undeletable.add(path.name)
                log.error("cannot remove baseline request %s (%s); write requests as the "
                          "service's user", path, exc)  # fmt: skip
        return out


def _write_atomically(path: Path, data: bytes) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(path, data)
    except OSError as exc:
        raise BaselineStoreError(f"cannot write {path}: {exc}") from exc


class BaselineKeeper:
    """The service's shell: restores, saves and resets the baselines of serving models.

    Runs on the worker thread (and in ``stop`` once the worker is gone). Counters of the
    core become Prometheus metrics here, by difference since the last look.
    """

    def __init__(self, settings: BaselineSettings, metrics: AgentMetrics) -> None:
        self.settings = settings
        self.store = BaselineStore(settings.state_dir) if settings.state_dir else None
        self.metrics = metrics
        self.streams: dict[str, DeviceBaselines] = {}
        self._seen: dict[str, tuple[int, int, int]] = {}
        self._next_poll = 0.0

    def attach(self, stream: str, baselines: DeviceBaselines | None) -> None:
        """A model starts serving ``stream``: its baselines are restored once, then tended."""
        if baselines is None:
            self.streams.pop(stream, None)
            return
        if self.streams.get(stream) is baselines:
            return
        self.streams[stream] = baselines
        self._seen[stream] = (baselines.learned, baselines.evictions, baselines.resets)
        if baselines.attached:
            return  # served before (a rollback): its baselines are in memory
        baselines.attached = True
        baselines.max_devices = self.settings.max_devices
        document = self.store.load(stream) if self.store is not None else None
        if document is None:
            return
        problem = baselines.restore(document)
        if problem is None:
            log.info("stream %s: %d device baselines restored", stream, len(baselines))
        else:
            log.warning("stream %s: stored baselines not used (%s); devices learn again",
                        stream, problem)  # fmt: skip

    def tend(self, now: float) -> bool:
        """Apply reset requests, save what changed, update metrics (every ``poll_s``).

        True when a baseline changed (the service then republishes its status).
        """
        if now < self._next_poll:
            return False
        self._next_poll = now + self.settings.poll_s
        if self.store is not None:
            self.apply_resets(self.streams, self.store.take_requests())
        changed = self.save(only_changed=True)
        self._update_metrics()
        return changed

    def save(self, only_changed: bool = False) -> bool:
        changed = False
        for stream, baselines in self.streams.items():
            if only_changed and not baselines.changed:
                continue
            changed = changed or baselines.changed
            baselines.changed = False
            if self.store is None:
                continue
            try:
                self.store.save(stream, baselines.to_document())
            except BaselineStoreError as exc:
                baselines.changed = True  # tried again at the next poll
                log.error("%s", exc)
        return changed

    def summary(self) -> dict[str, dict[str, int]]:
        return {stream: b.summary() for stream, b in self.streams.items()}

    def _update_metrics(self) -> None:
        m = self.metrics
        for stream, baselines in self.streams.items():
            now = (baselines.learned, baselines.evictions, baselines.resets)
            before = self._seen.get(stream, (0, 0, 0))
            for counter, new, old in zip(
                (m.baselines_learned, m.baseline_evictions, m.baseline_resets), now, before,
                strict=True,
            ):  # fmt: skip
                if new > old:
                    counter.labels(stream).inc(new - old)
            self._seen[stream] = now
            summary = baselines.summary()
            m.baseline_devices.labels(stream, "learned").set(summary["learned"])
            m.baseline_devices.labels(stream, "warming").set(summary["warming"])

    @staticmethod
    def apply_resets(
        streams: dict[str, DeviceBaselines], requests: Iterable[tuple[str, str | None]]
    ) -> None:
        for device, stream in requests:
            targets = [stream] if stream is not None else list(streams)
            done = [s for s in targets if s in streams and streams[s].reset(device)]
            outcome = f"forgotten on {', '.join(done)}" if done else "no baseline known"
            log.info("baseline reset of device %r: %s", device, outcome)
