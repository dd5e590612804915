"""Detection metrics in numpy (no scikit-learn at evaluation time); tests compare with it."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt


def _rank_average(values: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """1-based ranks, ties get their average rank."""
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    ranks = np.empty(len(values), dtype=np.float64)
    boundaries = np.flatnonzero(np.diff(sorted_values)) + 1
    starts = np.concatenate([[0], boundaries])
    ends = np.concatenate([boundaries, [len(values)]])
    for start, end in zip(starts, ends, strict=True):
        ranks[order[start:end]] = (start + end + 1) / 2.0
    return ranks


def roc_auc(labels: npt.ArrayLike, scores: npt.ArrayLike) -> float:
    """Area under the ROC curve (Mann-Whitney U, ties counted half)."""
    y = np.asarray(labels).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    positives, negatives = int(y.sum()), int((~y).sum())
    if positives == 0 or negatives == 0:
        return float("nan")
    ranks = _rank_average(s)
    return float((ranks[y].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def average_precision(labels: npt.ArrayLike, scores: npt.ArrayLike) -> float:
    """PR-AUC as average precision: Σ (R_n − R_{n−1}) P_n over distinct score thresholds."""
    y = np.asarray(labels).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    if not y.any():
        return float("nan")
    order = np.argsort(-s, kind="mergesort")
    y_sorted, s_sorted = y[order], s[order]
    last_of_tie = np.concatenate([np.flatnonzero(np.diff(s_sorted)), [len(s) - 1]])
    true_pos = np.cumsum(y_sorted)[last_of_tie]
    predicted = last_of_tie + 1
    precision = true_pos / predicted
    recall = true_pos / y.sum()
    return float(np.sum(np.diff(np.concatenate([[0.0], recall])) * precision))


def at_threshold(labels: npt.ArrayLike, scores: npt.ArrayLike, threshold: float) -> dict[str, Any]:
    """Confusion matrix and rates for ``score >= threshold`` meaning anomaly."""
    y = np.asarray(labels).astype(bool)
    predicted = np.asarray(scores, dtype=np.float64) >= threshold
    tp = int((predicted & y).sum())
    fp = int((predicted & ~y).sum())
    fn = int((~predicted & y).sum())
    tn = int((~predicted & ~y).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "threshold": float(threshold),
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "far": fp / (fp + tn) if fp + tn else 0.0,
        "mar": fn / (fn + tp) if fn + tp else 0.0,
        "confusion": {"tp": tp, "fp": fp, "fn": fn, "tn": tn},
    }


def detection_report(
    labels: npt.ArrayLike, scores: npt.ArrayLike, threshold: float
) -> dict[str, Any]:
    """All evaluation numbers for one model on one labelled data set."""
    y = np.asarray(labels)
    report = {
        "rows": len(y),
        "positives": int(np.asarray(y).astype(bool).sum()),
        "roc_auc": roc_auc(y, scores),
        "pr_auc": average_precision(y, scores),
    }
    report.update(at_threshold(y, scores, threshold))
    return report
