"""Evaluating a bundle on labelled data through the edge scorer (int8 and, if given, float)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from models.bundle import Bundle
from models.datasets import read_table
from models.features import sliding_windows
from models.metrics import detection_report
from models.scoring import Scorer


def model_inputs(bundle: Bundle, data: Path, label: str | None = None) -> tuple[Any, Any]:
    """Model inputs and labels of a labelled CSV, as one device streaming its rows in order."""
    table = read_table(data)
    labels = table.labels(label)
    if labels is None:
        raise ValueError(f"{data} has no label column (looked for {label or 'Class/anomaly'})")
    return payload_inputs(bundle, table.payloads(bundle.manifest.features.names)), labels


def payload_inputs(bundle: Bundle, payloads: Sequence[Mapping[str, Any]]) -> Any:
    """Model inputs of payloads (one device's, in order) through the bundle's feature spec."""
    spec = bundle.manifest.features
    x, rejected = spec.vectorize(payloads)
    if rejected:
        raise ValueError(f"{len(rejected)} rows rejected by the feature spec, e.g. {rejected[0]}")
    return sliding_windows(x, spec.window)


def evaluate(
    bundle: Bundle, data: Path, float_bundle: Bundle | None = None, label: str | None = None
) -> dict[str, Any]:
    """The bundle's numbers at its own threshold, with the float model's beside them."""
    x, labels = model_inputs(bundle, data, label)
    threshold = bundle.manifest.score.threshold
    report = detection_report(labels, Scorer(bundle).score(x).scores, threshold)
    report["model"] = {"name": bundle.manifest.name, "version": bundle.manifest.version}
    if float_bundle is not None:
        float_scores = Scorer(float_bundle).score(x).scores
        report["float"] = detection_report(labels, float_scores, threshold)
    return report


def _rounded(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 4)
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    return value


def metrics_summary(report: dict[str, Any]) -> dict[str, Any]:
    """The part of an evaluation worth keeping in a manifest."""
    keep = ("rows", "positives", "roc_auc", "pr_auc", "precision", "recall", "f1", "far", "mar")
    summary = {k: _rounded(report[k]) for k in keep if k in report}
    summary["confusion"] = report.get("confusion")
    if "float" in report:
        summary["float_roc_auc"] = _rounded(report["float"]["roc_auc"])
    return summary
