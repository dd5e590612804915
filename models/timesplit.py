"""Splitting labelled rows by time, never at random: the past trains, the newest rows judge.

Rows are ordered by event time (ties keep their arrival order). The oldest part trains the
autoencoder (its normal rows only), the next part calibrates the threshold (normal rows), and
the newest part is the evaluation set both champion and challenger are scored on. Cut points
never fall inside a run of equal timestamps, so no evaluation row is older than any training
or calibration row, and no calibration row older than any training row. Pure numpy, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from plumbing.errors import EdgewatchError

IndexArray = npt.NDArray[np.intp]


class SplitError(EdgewatchError):
    """Too few rows, or no normal rows to train on, after the split."""


@dataclass(frozen=True)
class TimeSplit:
    """Row indices of each part (into the arrays given) and the times where they meet."""

    train: IndexArray  # normal rows of the oldest part
    calibration: IndexArray  # normal rows of the middle part
    evaluation: IndexArray  # every row of the newest part, normal and anomalous
    calibration_from: float  # first time of the calibration part
    evaluation_from: float  # first time of the evaluation part
    dropped_anomalies: int  # anomalous rows of the train and calibration parts (not used)

    def summary(self, times: npt.ArrayLike, labels: npt.ArrayLike) -> dict[str, Any]:
        t = np.asarray(times, dtype=np.float64)
        y = np.asarray(labels)

        def span(rows: IndexArray) -> list[float] | None:
            return [float(t[rows].min()), float(t[rows].max())] if len(rows) else None

        return {
            "order": "event time (ts); train < calibration < evaluation",
            "calibration_from": self.calibration_from,
            "evaluation_from": self.evaluation_from,
            "train_rows": len(self.train),
            "calibration_rows": len(self.calibration),
            "evaluation_rows": len(self.evaluation),
            "evaluation_anomalies": int(y[self.evaluation].sum()),
            "dropped_anomalies": self.dropped_anomalies,
            "train_span": span(self.train),
            "calibration_span": span(self.calibration),
            "evaluation_span": span(self.evaluation),
        }


def _cut(sorted_times: npt.NDArray[np.float64], position: int) -> int:
    """Move a cut forward past any rows sharing the time just before it."""
    if position <= 0 or position >= len(sorted_times):
        return position
    return int(np.searchsorted(sorted_times, sorted_times[position - 1], side="right"))


def time_split(
    times: npt.ArrayLike,
    labels: npt.ArrayLike,
    *,
    evaluation_fraction: float = 0.2,
    calibration_fraction: float = 0.2,
    min_train_rows: int = 10,
) -> TimeSplit:
    """Oldest rows → train, then calibration, newest ``evaluation_fraction`` → evaluation."""
    t = np.asarray(times, dtype=np.float64)
    y = np.asarray(labels).astype(bool)
    if len(t) != len(y):
        raise ValueError(f"{len(t)} times but {len(y)} labels")
    if not 0 < evaluation_fraction < 1 or not 0 < calibration_fraction < 1:
        raise ValueError("fractions must lie strictly between 0 and 1")
    if evaluation_fraction + calibration_fraction >= 1:
        raise ValueError("evaluation and calibration fractions leave no rows to train on")
    if not np.isfinite(t).all():
        raise SplitError("some rows have no usable time")
    order = np.argsort(t, kind="stable")
    sorted_times = t[order]
    n = len(t)
    evaluation_at = _cut(sorted_times, round(n * (1 - evaluation_fraction)))
    train_end = round(n * (1 - evaluation_fraction - calibration_fraction))
    calibration_at = _cut(sorted_times, min(train_end, evaluation_at))
    older = order[:calibration_at]
    middle = order[calibration_at:evaluation_at]
    newest = order[evaluation_at:]
    train = np.sort(older[~y[older]])
    calibration = np.sort(middle[~y[middle]])
    if len(train) < min_train_rows or len(calibration) == 0 or len(newest) == 0:
        raise SplitError(
            f"{n} rows give {len(train)} training, {len(calibration)} calibration and "
            f"{len(newest)} evaluation rows; need at least {min_train_rows} training rows and "
            "some of each other part"
        )
    return TimeSplit(
        train=train,
        calibration=calibration,
        evaluation=np.sort(newest),
        calibration_from=float(sorted_times[calibration_at]),
        evaluation_from=float(sorted_times[evaluation_at]),
        dropped_anomalies=int(y[older].sum() + y[middle].sum()),
    )
