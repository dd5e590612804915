"""Scoring with a bundle's TFLite model: the one function the edge and evaluation share.

The interpreter comes from ai_edge_litert, else tflite_runtime, else tensorflow.lite.
A batch is quantized with the model's own input parameters, run in one ``invoke``, and
scored against the unquantized input, so int8 saturation of an outlier still shows up as a
large error. A model with per-device baselines may blend each input value's own size into
its error (the baseline's ``deviation_weight``: device-scaled, that size is the reading's
z-score against the device's warm-up). Batches are padded to the next of a few sizes (8,
64, 512, 4096) and each size keeps its own interpreter, so varying batch sizes never
reallocate tensors. The sizes are far apart because an interpreter costs ~0.7 MB resident
and padded rows cost microseconds.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from models.bundle import Bundle
from plumbing.errors import EdgewatchError

FloatArray = npt.NDArray[np.float32]
INTERPRETER_MODULES = (
    "ai_edge_litert.interpreter",
    "tflite_runtime.interpreter",
    "tensorflow.lite",
)
BUCKETS = (8, 64, 512, 4096)
MAX_BUCKET = BUCKETS[-1]


class ScoringError(EdgewatchError):
    """No interpreter available, or the model does not fit its manifest."""


def interpreter_class() -> tuple[type[Any], str]:
    """The first importable TFLite interpreter class and the module it came from."""
    for module_name in INTERPRETER_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        return module.Interpreter, module_name
    raise ScoringError(
        "no TFLite interpreter installed: pip install 'edgewatch[edge]' (ai-edge-litert), "
        "or tflite-runtime, or tensorflow"
    )


@dataclass(frozen=True, slots=True)
class Scores:
    """Per-row scores and per-input-value errors (rows × model input width)."""

    scores: FloatArray
    errors: FloatArray


class Scorer:
    """Scores batches of model inputs with one bundle's model."""

    def __init__(self, bundle: Bundle, num_threads: int = 1) -> None:
        self.bundle = bundle
        self.manifest = bundle.manifest
        self.width = self.manifest.features.input_width
        self._interpreter_cls, self.runtime = interpreter_class()
        self._num_threads = num_threads
        self._by_bucket: dict[int, tuple[Any, npt.NDArray[Any]]] = {}
        self._row_offsets = np.zeros((0, 1), dtype=np.intp)  # see contributions
        self._names = np.array(self.manifest.features.names, dtype=object)
        probe, _ = self._interpreter(BUCKETS[0])
        (self._input,) = probe.get_input_details()
        (self._output,) = probe.get_output_details()
        if int(self._input["shape"][-1]) != self.width:
            raise ScoringError(
                f"model input width {self._input['shape'][-1]} != feature spec {self.width}"
            )
        self._in_scale, self._in_zero = self._input["quantization"]
        self._out_scale, self._out_zero = self._output["quantization"]
        self._in_dtype = self._input["dtype"]
        self._squared = self.manifest.score.kind in ("mse", "max_feature_mse")
        self._per_feature_max = self.manifest.score.kind == "max_feature_mse"
        baseline = self.manifest.baseline
        self.deviation_weight = baseline.deviation_weight if baseline is not None else 0.0

    def _interpreter(self, bucket: int) -> tuple[Any, npt.NDArray[Any]]:
        """The bucket's interpreter and its input buffer (padding rows keep stale values:
        rows are scored independently and padded rows' outputs are dropped)."""
        found = self._by_bucket.get(bucket)
        if found is None:
            interpreter = self._interpreter_cls(
                model_content=self.bundle.model, num_threads=self._num_threads
            )
            (details,) = interpreter.get_input_details()
            interpreter.resize_tensor_input(details["index"], [bucket, self.width], strict=False)
            interpreter.allocate_tensors()
            found = self._by_bucket[bucket] = (
                interpreter, np.zeros((bucket, self.width), dtype=details["dtype"]))  # fmt: skip
        return found

    def reconstruct(self, inputs: FloatArray) -> FloatArray:
        """The model's reconstruction of each row, dequantized to float32."""
        rows = len(inputs)
        if rows <= MAX_BUCKET:
            return self._run(inputs)
        out = np.empty((rows, self.width), dtype=np.float32)
        for start in range(0, rows, MAX_BUCKET):
            chunk = inputs[start : start + MAX_BUCKET]
            out[start : start + len(chunk)] = self._run(chunk)
        return out

    def _run(self, chunk: FloatArray) -> FloatArray:
        # In place where numpy allows: each call on a batch releases the GIL and takes it
        # back, which costs the agent's network threads more than the arithmetic.
        rows = len(chunk)
        bucket = next(size for size in BUCKETS if size >= rows)
        interpreter, feed = self._interpreter(bucket)
        if self._in_scale:
            info = np.iinfo(self._in_dtype)
            quantized = chunk / self._in_scale
            np.rint(quantized, out=quantized)
            quantized += self._in_zero
            np.clip(quantized, info.min, info.max, out=feed[:rows], casting="unsafe")
        else:
            feed[:rows] = chunk
        interpreter.set_tensor(self._input["index"], feed)
        interpreter.invoke()
        raw = interpreter.get_tensor(self._output["index"])[:rows]
        dequantized: FloatArray
        if not self._out_scale:
            dequantized = raw.astype(np.float32)
            return dequantized
        dequantized = np.subtract(raw, np.float32(self._out_zero), dtype=np.float32)
        dequantized *= np.float32(self._out_scale)
        return dequantized

    def score(self, inputs: FloatArray) -> Scores:
        """Reconstruction error per row (the manifest's kind) and per input value."""
        if len(inputs) == 0:
            return Scores(np.empty(0, np.float32), np.empty((0, self.width), np.float32))
        return self.score_reconstructed(inputs, self.reconstruct(inputs), self.deviation_weight)

    def score_reconstructed(
        self, inputs: FloatArray, reconstruction: FloatArray, deviation_weight: float
    ) -> Scores:
        """Scores of inputs given their reconstruction; the manifest's baseline sets the
        weight in :meth:`score` (``deviation_weight`` w: each value's error is
        (1 − w) × its reconstruction error + w × the same measure of the value itself)."""
        diff = inputs - reconstruction
        errors = np.square(diff, out=diff) if self._squared else np.abs(diff, out=diff)
        if deviation_weight:
            own = np.square(inputs) if self._squared else np.abs(inputs)
            w = np.float32(deviation_weight)
            errors = (np.float32(1) - w) * errors + w * own.astype(np.float32)
        if self._per_feature_max:
            scores = self._per_feature(errors).max(axis=1)
        else:
            scores = errors.mean(axis=1, dtype=np.float32)
        return Scores(scores, errors)

    def _per_feature(self, errors: FloatArray) -> FloatArray:
        """Each feature's error averaged over the window positions (rows × features)."""
        spec = self.manifest.features
        if spec.window == 1:
            return errors
        per_feature: FloatArray = errors.reshape(len(errors), spec.window, spec.width).mean(
            axis=1, dtype=np.float32
        )
        return per_feature

    def contributions(self, errors: FloatArray, top_k: int) -> list[dict[str, float]]:
        """Top features by error per row; windowed errors are averaged over the window."""
        if top_k == 0 or len(errors) == 0:
            return [{} for _ in range(len(errors))]
        spec = self.manifest.features
        per_feature = self._per_feature(errors)
        k = min(top_k, spec.width)
        top = np.argsort(per_feature, axis=1)[:, : -k - 1 : -1]
        # The top values through flat indices (take_along_axis would release the GIL three
        # times), rounded and made Python floats for the whole batch at once.
        rows = len(per_feature)
        if len(self._row_offsets) < rows:
            self._row_offsets = np.arange(rows)[:, None] * spec.width
        flat = per_feature.reshape(-1)[top + self._row_offsets[:rows]]
        values = np.round(flat, 6).tolist()
        names = self._names[top].tolist()  # each row's top names, in one step
        return [dict(zip(row, row_values, strict=True))
                for row, row_values in zip(names, values, strict=True)]  # fmt: skip
