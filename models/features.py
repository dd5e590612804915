"""The feature spec: the one way a JSON payload becomes a model input (rule 3 of DESIGN).

Training and scoring both call :meth:`FeatureSpec.vectorize` (payloads) or
:meth:`FeatureSpec.transform` (numeric matrix), so there is no training/serving skew.
Windowed models stack each device's last ``window`` vectors; :class:`WindowState` does that
on a live stream and :func:`sliding_windows` does the same on a recorded series.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import chain
from operator import itemgetter
from typing import Any, Literal, Self

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, model_validator

FloatMatrix = npt.NDArray[np.float32]

# Reasons a payload is rejected; they are dead-letter reasons as they stand.
MISSING_FIELD = "missing_field"
WRONG_TYPE = "wrong_type"
NON_FINITE = "non_finite"

_MISSING = object()
_NUMBER_TYPES = frozenset({float, int})  # exactly: bool is not a number here


class FieldSpec(BaseModel):
    """One input feature: which payload field, how to clean it, how to scale it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(..., min_length=1, description="Payload field (top-level JSON key).")
    on_missing: Literal["reject", "impute"] = Field(
        "reject", description="Absent or null field: reject the payload, or use impute_value."
    )
    on_invalid: Literal["reject", "impute"] = Field(
        "reject",
        description="Non-numeric (string, boolean, object) or non-finite value: reject the "
        "payload, or use impute_value.",
    )
    impute_value: float = Field(0.0, description="Raw value used when imputing.")
    transform: Literal["none", "log1p"] = Field(
        "none", description="Applied before scaling; log1p for heavy-tailed amounts (x >= 0)."
    )
    center: float = Field(0.0, description="Subtracted after the transform (mean or min).")
    scale: float = Field(1.0, gt=0, description="Divisor after centering (std or max-min).")
    clip: float | None = Field(
        None, gt=0, description="Scaled values are clipped to [-clip, clip]."
    )


class FeatureSpec(BaseModel):
    """Ordered fields, their cleaning and scaling, and an optional window length."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    fields: tuple[FieldSpec, ...] = Field(..., min_length=1, description="Inputs, in order.")
    scaling: Literal["standard", "minmax"] = Field(
        "standard", description="How center/scale were fitted (documentation of intent)."
    )
    window: int = Field(
        1, ge=1, le=1024, description="Readings per model input (1 = single payloads)."
    )
    device_field: str | None = Field(
        None, description="Payload field naming the device, when not taken from the topic."
    )

    @model_validator(mode="after")
    def _unique_names(self) -> Self:
        names = [f.name for f in self.fields]
        if len(set(names)) != len(names):
            raise ValueError("field names must be unique")
        return self

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.fields]

    @property
    def width(self) -> int:
        """Features per reading."""
        return len(self.fields)

    @property
    def input_width(self) -> int:
        """Model input width: readings per window × features per reading."""
        return self.window * len(self.fields)

    @classmethod
    def fit(
        cls,
        names: Sequence[str],
        data: npt.ArrayLike,
        *,
        scaling: Literal["standard", "minmax"] = "standard",
        log1p: Sequence[str] = (),
        clip: float | None = None,
        window: int = 1,
        on_missing: Literal["reject", "impute"] = "reject",
        on_invalid: Literal["reject", "impute"] = "reject",
        scale_floor: float = 0.0,
    ) -> FeatureSpec:
        """Fit scaling parameters on training rows (raw values, one column per name).

        ``scale_floor`` keeps each scale at least that fraction of the column's center: a
        channel that hardly moved in the training rows would otherwise turn later sensor
        noise or slow drift into errors of many standard deviations.
        """
        raw = np.asarray(data, dtype=np.float64)
        if raw.ndim != 2 or raw.shape[1] != len(names):
            raise ValueError(f"data must be rows x {len(names)} columns, got {raw.shape}")
        transformed = raw.copy()
        for j, name in enumerate(names):
            if name in log1p:
                transformed[:, j] = np.log1p(np.maximum(transformed[:, j], 0.0))
        centers, scales = fit_scaling(transformed, scaling, scale_floor)
        medians = np.median(raw, axis=0)
        fields = tuple(
            FieldSpec(
                name=name,
                on_missing=on_missing,
                on_invalid=on_invalid,
                impute_value=float(medians[j]),
                transform="log1p" if name in log1p else "none",
                center=float(centers[j]),
                scale=float(scales[j]),
                clip=clip,
            )
            for j, name in enumerate(names)
        )
        return cls(fields=fields, scaling=scaling, window=window)

    # -- payloads -> raw matrix ----------------------------------------------------------------
    def extract(
        self, payloads: Sequence[Mapping[str, Any]]
    ) -> tuple[npt.NDArray[np.float64], list[Rejection]]:
        """Raw values of each payload's fields; rejected rows are listed (their row is junk).

        The common case, a batch whose every field is present and a real number, takes
        C-level steps only (an itemgetter per payload, one type check over the batch, one
        array); otherwise rows go one by one, those with a problem through the per-field
        policies.
        """
        names = self.names
        take = itemgetter(*names) if len(names) > 1 else lambda p: (p[names[0]],)
        try:
            rows = list(map(take, payloads))
        except KeyError:
            rows = None
        if rows is not None and _NUMBER_TYPES.issuperset(map(type, chain.from_iterable(rows))):
            try:
                return np.array(rows, dtype=np.float64).reshape(len(rows), len(names)), []
            except OverflowError:
                pass  # an integer beyond float range: handled per field below
        out = np.empty((len(payloads), len(names)), dtype=np.float64)
        rejections: list[Rejection] = []
        for i, payload in enumerate(payloads):
            try:
                values = take(payload)
            except KeyError:
                values = None
            if values is not None and _NUMBER_TYPES.issuperset(map(type, values)):
                try:
                    out[i] = values
                    continue
                except OverflowError:
                    pass  # an integer beyond float range: handled per field below
            row = [payload.get(name, _MISSING) for name in names]
            problem = self._clean_row(row, out[i])
            if problem is not None:
                rejections.append(Rejection(i, *problem))
        return out, rejections

    def _clean_row(self, row: list[Any], target: npt.NDArray[np.float64]) -> tuple[str, str] | None:
        for j, (spec, value) in enumerate(zip(self.fields, row, strict=True)):
            if value is _MISSING or value is None:
                if spec.on_missing == "reject":
                    return MISSING_FIELD, f"field {spec.name!r} is missing"
                target[j] = spec.impute_value
                continue
            number = _as_number(value)
            if number is None:
                if spec.on_invalid == "reject":
                    kind = type(value).__name__
                    return WRONG_TYPE, f"field {spec.name!r} is {kind}, not a number"
                number = spec.impute_value
            target[j] = number
        return None

    # -- raw matrix -> model input ---------------------------------------------------------------
    def transform(
        self, raw: npt.ArrayLike, rejections: list[Rejection] | None = None
    ) -> tuple[FloatMatrix, list[Rejection]]:
        """Non-finite policy, transforms, scaling and clipping, vectorised over the batch."""
        values, rejections = self.clean(raw, rejections)
        return self.scale(values), rejections

    def clean(
        self, raw: npt.ArrayLike, rejections: list[Rejection] | None = None, *, copy: bool = True
    ) -> tuple[npt.NDArray[np.float64], list[Rejection]]:
        """The part of :meth:`transform` before scaling: non-finite policy and transforms.

        Scaling parameters are fitted on these values (see :meth:`fit`, :func:`fit_scaling`).
        ``copy=False`` may transform a float64 ``raw`` in place (one made by :meth:`extract`).
        """
        values = np.array(raw, dtype=np.float64) if copy else np.asarray(raw, dtype=np.float64)
        rejections = list(rejections or [])
        # One reduction tells whether any value is NaN or infinite (they propagate); the
        # full check runs only then.
        if not np.isfinite(values.sum()):
            bad = ~np.isfinite(values)
            impute = np.array([f.on_invalid == "impute" for f in self.fields])
            fill = np.array([f.impute_value for f in self.fields])
            rejected_rows = {r.index for r in rejections}
            for i in np.flatnonzero((bad & ~impute).any(axis=1)):
                if int(i) not in rejected_rows:
                    column = int(np.flatnonzero(bad[i] & ~impute)[0])
                    name = self.fields[column].name
                    rejections.append(
                        Rejection(int(i), NON_FINITE, f"field {name!r} is {values[i, column]}")
                    )
            values = np.where(bad & impute, fill, values)
            values = np.where(np.isfinite(values), values, 0.0)  # rows already rejected
        for j, spec in enumerate(self.fields):
            if spec.transform == "log1p":
                values[:, j] = np.log1p(np.maximum(values[:, j], 0.0))
        rejections.sort(key=lambda r: r.index)
        return values, rejections

    @property
    def centers(self) -> npt.NDArray[np.float64]:
        return np.array([f.center for f in self.fields])

    @property
    def scales(self) -> npt.NDArray[np.float64]:
        return np.array([f.scale for f in self.fields])

    def scale(
        self,
        values: npt.NDArray[np.float64],
        centers: npt.NDArray[np.float64] | None = None,
        scales: npt.NDArray[np.float64] | None = None,
    ) -> FloatMatrix:
        """Cleaned values to model inputs: centered, scaled and clipped, as float32.

        ``centers`` and ``scales`` default to the spec's own; they may also be given per row
        (rows × width), as per-device baselines do.
        """
        centers = self.centers if centers is None else centers
        scales = self.scales if scales is None else scales
        # Division and the cast to float32 in one pass, clipping in place: every numpy call
        # on a batch hands the GIL to the service's network threads and back. A value beyond
        # float32's range becomes ±inf, which the clip bounds: not worth a warning.
        with np.errstate(over="ignore"):
            scaled = np.divide(
                values - centers,
                scales,
                dtype=np.float64,
                out=np.empty(values.shape, np.float32),
                casting="same_kind",
            )
        clips = np.array([f.clip if f.clip is not None else np.inf for f in self.fields])
        return np.clip(scaled, -clips, clips, out=scaled)

    def vectorize(
        self, payloads: Sequence[Mapping[str, Any]]
    ) -> tuple[FloatMatrix, list[Rejection]]:
        """Payloads to scaled rows (N × width) plus the rows that were rejected and why."""
        values, rejections = self.clean(*self.extract(payloads), copy=False)
        return self.scale(values), rejections


def fit_scaling(
    values: npt.NDArray[np.float64], scaling: Literal["standard", "minmax"], scale_floor: float
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Centers and scales of cleaned values (rows × features): the one fitting rule.

    Standard: mean and standard deviation; minmax: minimum and range. Each scale is at
    least ``scale_floor`` × |center|, and a scale that is still ~0 becomes 1.
    """
    if scaling == "standard":
        centers = values.mean(axis=0)
        scales = values.std(axis=0)
    else:
        centers = values.min(axis=0)
        scales = values.max(axis=0) - centers
    scales = np.maximum(scales, scale_floor * np.abs(centers))
    return centers, np.where(scales > 1e-12, scales, 1.0)


class BaselineSpec(BaseModel):
    """Per-device baselines a model asks the agent to learn (a manifest's ``baseline``).

    Each device's first ``warmup_rows`` readings are its baseline: with ``scale`` the
    device's own centers and scales replace the spec's (the spec's scaling rule, with
    ``scale_floor``); with ``threshold = "device_quantile"`` the device's alert threshold is
    ``margin`` × the ``quantile`` of the model's scores on those readings' windows, scaled
    the device's way. Until then the device's events are scored with the spec's scaling,
    marked as warming up, and never alerts.

    ``deviation_weight`` w blends the device's own deviation into the score: each input
    value's error becomes (1 − w) × its reconstruction error + w × the same measure of the
    value itself (device-scaled, a value is the reading's z-score against the device's
    warm-up). 0 is the autoencoder alone; see :meth:`models.scoring.Scorer.score`.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    warmup_rows: int = Field(
        400, ge=2, le=100_000, description="Readings a device's baseline is learned from."
    )
    scale: bool = Field(True, description="Scale each device by its own warm-up readings.")
    scale_floor: float = Field(
        0.0, ge=0, description="Device scales are at least this × |center| (see fit_scaling)."
    )
    threshold: Literal["model", "device_quantile"] = Field(
        "device_quantile",
        description="model: the manifest's threshold for every device; device_quantile: "
        "margin × the quantile of the device's own warm-up scores.",
    )
    quantile: float = Field(0.99, gt=0, le=1, description="Quantile of warm-up scores.")
    margin: float = Field(1.0, gt=0, description="Device threshold = margin × that quantile.")
    deviation_weight: float = Field(
        0.0,
        ge=0,
        le=1,
        description="Share of the score taken from the device-scaled input itself (its "
        "z-score against the warm-up) rather than the reconstruction error; chosen by "
        "leave-files-out cross-validation (edgewatch-models skab-unseen --select).",
    )

    def device_scaling(
        self, spec: FeatureSpec, values: npt.NDArray[np.float64]
    ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
        """A device's centers and scales from its cleaned warm-up values."""
        if not self.scale:
            return spec.centers, spec.scales
        return fit_scaling(values, spec.scaling, self.scale_floor)

    def device_threshold(self, warmup_scores: npt.NDArray[np.float32], model: float) -> float:
        """A device's alert threshold from the model's scores on its warm-up windows."""
        if self.threshold == "model":
            return model
        return float(np.quantile(warmup_scores.astype(np.float64), self.quantile)) * self.margin


@dataclass(frozen=True, slots=True)
class Rejection:
    """Row ``index`` of a batch cannot be scored: ``reason`` (a code) and a human detail."""

    index: int
    reason: str
    detail: str


def _as_number(value: object) -> float | None:
    """A JSON number as float; booleans and strings are not numbers here."""
    if type(value) is float:
        return value
    if type(value) is int:
        try:
            return float(value)
        except OverflowError:
            return float("inf") if value > 0 else float("-inf")
    return None


def sliding_windows(rows: npt.ArrayLike, window: int) -> FloatMatrix:
    """Each row's window of the last ``window`` rows, flattened; the start is edge-padded.

    Equal to feeding the rows one by one through :class:`WindowState` for one device.
    """
    values = np.asarray(rows, dtype=np.float32)
    if window == 1:
        return values
    padded = np.concatenate([np.repeat(values[:1], window - 1, axis=0), values])
    stacked = np.lib.stride_tricks.sliding_window_view(padded, window, axis=0)
    # sliding_window_view puts the window last: (N, F, W) -> (N, W, F) -> (N, W*F)
    return np.ascontiguousarray(stacked.transpose(0, 2, 1)).reshape(len(values), -1)


class WindowState:
    """Per-device ring buffers of the last ``window`` scaled readings, bounded in devices.

    A new device's buffer starts filled with its first reading (the same edge padding as
    :func:`sliding_windows`). Beyond ``max_devices`` the least recently seen device is
    forgotten and ``evictions`` counts it.
    """

    def __init__(self, window: int, width: int, max_devices: int) -> None:
        self.window = window
        self.width = width
        self.max_devices = max_devices
        self.evictions = 0
        self._rings: OrderedDict[str, npt.NDArray[np.float32]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._rings)

    def push(self, devices: Sequence[str], rows: FloatMatrix) -> FloatMatrix:
        """Append each row to its device's ring (in order) and return the windows."""
        if self.window == 1:
            return rows
        out = np.empty((len(rows), self.window * self.width), dtype=np.float32)
        for i, device in enumerate(devices):
            ring = self._rings.get(device)
            if ring is None:
                ring = np.repeat(rows[i : i + 1], self.window, axis=0)
                self._rings[device] = ring
                if len(self._rings) > self.max_devices:
                    self._rings.popitem(last=False)
                    self.evictions += 1
            else:
                self._rings.move_to_end(device)
                ring[:-1] = ring[1:]
                ring[-1] = rows[i]
            out[i] = ring.reshape(-1)
        return out

    def seed(self, device: str, rows: FloatMatrix) -> None:
        """Make ``device``'s history the given rows (the last ``window`` are kept)."""
        if self.window == 1:
            return
        history = np.asarray(rows, dtype=np.float32)[-self.window :]
        if len(history) < self.window:
            history = np.concatenate(
                [np.repeat(history[:1], self.window - len(history), axis=0), history]
            )
        if device in self._rings:
            self._rings.move_to_end(device)
        self._rings[device] = np.array(history)
        if len(self._rings) > self.max_devices:
            self._rings.popitem(last=False)
            self.evictions += 1

    def forget(self, device: str) -> None:
        """Drop ``device``'s history: its next reading starts a new one."""
        self._rings.pop(device, None)
