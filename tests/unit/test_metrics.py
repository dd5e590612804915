"""Our numpy metrics equal scikit-learn's on known cases (ties included)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import (
    average_precision_score,
    confusion_matrix,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
)

from models.metrics import at_threshold, average_precision, detection_report, roc_auc

CASES = [
    ([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]),
    ([0, 1, 0, 1, 0, 0, 1], [0.2, 0.2, 0.5, 0.9, 0.1, 0.5, 0.5]),  # ties
    ([1, 0, 0, 0, 1, 0, 0, 0, 0, 1], [3, 1, 2, 2, 3, 0, 1, 5, 0, 4]),
]


@pytest.mark.parametrize(("labels", "scores"), CASES)
def test_ranking_metrics_match_sklearn(labels: list[int], scores: list[float]) -> None:
    assert roc_auc(labels, scores) == pytest.approx(roc_auc_score(labels, scores))
    assert average_precision(labels, scores) == pytest.approx(
        average_precision_score(labels, scores)
    )


@pytest.mark.parametrize(("labels", "scores"), CASES)
def test_threshold_metrics_match_sklearn(labels: list[int], scores: list[float]) -> None:
    threshold = float(np.median(scores))
    predicted = (np.asarray(scores) >= threshold).astype(int)
    result = at_threshold(labels, scores, threshold)
    assert result["precision"] == pytest.approx(precision_score(labels, predicted))
    assert result["recall"] == pytest.approx(recall_score(labels, predicted))
    assert result["f1"] == pytest.approx(f1_score(labels, predicted))
    tn, fp, fn, tp = confusion_matrix(labels, predicted).ravel()
    assert result["confusion"] == {"tp": tp, "fp": fp, "fn": fn, "tn": tn}
    assert result["far"] == pytest.approx(fp / (fp + tn))
    assert result["mar"] == pytest.approx(fn / (fn + tp))


def test_report_has_the_documented_keys() -> None:
    report = detection_report([0, 1, 0, 1], [0.1, 0.9, 0.2, 0.3], 0.5)
    for key in ("roc_auc", "pr_auc", "precision", "recall", "f1", "threshold", "rows"):
        assert key in report
    assert report["rows"] == 4
