"""A retrain run's report: ``report.json`` and PNG plots of champion against challenger.

Written whether the gate passed or not, into one directory per run:

- ``report.json``: source, split, both models' figures, every gate rule with both figures and
  its verdict, and what was published (or why nothing was);
- ``roc.png`` and ``pr.png``: ROC and precision-recall curves of both models on the same
  evaluation rows;
- ``scores.png``: each model's score distribution on normal and fraud rows, with its
  threshold (log scale: reconstruction errors span orders of magnitude).

matplotlib (``train`` extra) draws through pyplot: files on a headless machine (matplotlib
falls back to Agg without a display), inline figures in a notebook.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

PLOTS = ("roc.png", "pr.png", "scores.png")


def _clean(value: Any) -> Any:
    """JSON without NaN/Infinity (not JSON): they become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if isinstance(value, np.generic):
        return _clean(value.item())
    if isinstance(value, Path):
        return str(value)
    return value


def write_json(directory: Path, document: dict[str, Any]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "report.json"
    path.write_text(json.dumps(_clean(document), indent=2, sort_keys=False) + "\n")
    return path


ScoredModels = dict[str, tuple[npt.NDArray[np.float32], float]]  # label -> (scores, threshold)


def figure_curves(labels: npt.ArrayLike, models: ScoredModels, kind: str) -> Any:
    """A matplotlib Figure of ROC (``kind='roc'``) or precision-recall curves of each model."""
    import matplotlib.pyplot as plt
    from sklearn.metrics import precision_recall_curve, roc_curve

    from models.metrics import average_precision, roc_auc

    y = np.asarray(labels).astype(int)
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    for label, (scores, _threshold) in models.items():
        if kind == "roc":
            fpr, tpr, _ = roc_curve(y, scores)
            ax.plot(fpr, tpr, label=f"{label} (ROC-AUC {roc_auc(y, scores):.4f})")
        else:
            precision, recall, _ = precision_recall_curve(y, scores)
            ax.step(recall, precision, where="post",
                    label=f"{label} (PR-AUC {average_precision(y, scores):.4f})")  # fmt: skip
    if kind == "roc":
        # Frauds are rare: the curve's story is at false-positive rates of 0.1-1 %, so log x.
        negatives = max(int((y == 0).sum()), 1)
        ax.set_xscale("log")
        ax.set_xlim(max(0.5 / negatives, 1e-5), 1.0)
        ax.set(xlabel="false positive rate (log)", ylabel="true positive rate", title="ROC")
    else:
        ax.set(xlabel="recall", ylabel="precision", title="Precision-recall")
    ax.legend(loc="lower right" if kind == "roc" else "lower left", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def figure_scores(labels: npt.ArrayLike, models: ScoredModels) -> Any:
    """Histograms of each model's scores on normal and fraud rows, with its threshold."""
    import matplotlib.pyplot as plt

    y = np.asarray(labels).astype(bool)
    fig, axes = plt.subplots(len(models), 1, figsize=(6.5, 2.6 * len(models)), squeeze=False)
    every = np.concatenate([np.asarray(s, dtype=np.float64) for s, _ in models.values()])
    low = max(float(every[every > 0].min()) if (every > 0).any() else 1e-6, 1e-6)
    bins = np.geomspace(low, max(float(every.max()), low * 10), 60)
    for ax, (label, (scores, threshold)) in zip(axes[:, 0], models.items(), strict=True):
        s = np.maximum(np.asarray(scores, dtype=np.float64), low)
        ax.hist(s[~y], bins=bins, alpha=0.6, density=True, label=f"normal ({int((~y).sum())})")
        ax.hist(s[y], bins=bins, alpha=0.6, density=True, label=f"fraud ({int(y.sum())})")
        ax.axvline(threshold, color="black", linestyle="--", linewidth=1,
                   label=f"threshold {threshold:.3g}")  # fmt: skip
        ax.set_xscale("log")
        ax.set(title=f"{label}: score distribution", xlabel="score (reconstruction error)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def write_plots(directory: Path, labels: npt.ArrayLike, models: ScoredModels) -> list[Path]:
    """roc.png, pr.png and scores.png of the given models on the same labelled rows."""
    import matplotlib.pyplot as plt

    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, fig in (
        ("roc.png", figure_curves(labels, models, "roc")),
        ("pr.png", figure_curves(labels, models, "pr")),
        ("scores.png", figure_scores(labels, models)),
    ):
        path = directory / name
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written
