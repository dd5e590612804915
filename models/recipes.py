"""Training recipes: how a labelled table becomes a trained bundle and its evaluation data.

Splits keep evaluation data unseen: normal rows are shuffled (seeded) into train,
calibration (threshold) and evaluation parts, and every anomalous row goes to evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from models.datasets import CREDITCARD_FEATURES, SKAB_FEATURES, Table
from models.features import FeatureSpec, sliding_windows
from models.training import TrainConfig, TrainedModel, fit_model


@dataclass
class Split:
    train: npt.NDArray[np.intp]
    calibration: npt.NDArray[np.intp]
    evaluation: npt.NDArray[np.intp]


def split_rows(
    labels: npt.NDArray[np.int8], seed: int, train: float = 0.6, calibration: float = 0.2
) -> Split:
    """Normal rows → train / calibration / evaluation; anomalies → evaluation only."""
    rng = np.random.default_rng(seed)
    normal = rng.permutation(np.flatnonzero(labels == 0))
    n_train = int(len(normal) * train)
    n_calibration = int(len(normal) * calibration)
    evaluation = np.concatenate([normal[n_train + n_calibration :], np.flatnonzero(labels != 0)])
    return Split(
        train=np.sort(normal[:n_train]),
        calibration=np.sort(normal[n_train : n_train + n_calibration]),
        evaluation=np.sort(evaluation),
    )


@dataclass
class RecipeResult:
    trained: TrainedModel
    eval_rows: npt.NDArray[np.intp]
    eval_labels: npt.NDArray[np.int8]


def train_on_table(
    table: Table,
    *,
    features: list[str],
    label: str | None,
    name: str,
    stream: str,
    version: int,
    config: TrainConfig,
    log1p: tuple[str, ...] = (),
    clip: float | None = 10.0,
    created_at: str | None = None,
) -> RecipeResult:
    """Row-wise model (window 1) on a table with a label column (0 = normal)."""
    labels = table.labels(label)
    if labels is None:
        labels = np.zeros(len(table), dtype=np.int8)
    raw = table.matrix(features)
    split = split_rows(labels, config.seed)
    spec = FeatureSpec.fit(features, raw[split.train], log1p=log1p, clip=clip)
    x, rejected = spec.transform(raw)
    if rejected:
        raise ValueError(f"{len(rejected)} training rows are not finite, e.g. {rejected[0]}")
    info: dict[str, Any] = {
        "source": table.path.name,
        "rows": len(table),
        "split": {"seed": config.seed, "train": 0.6, "calibration": 0.2},
        "anomalies_in_source": int(labels.sum()),
    }
    trained = fit_model(
        spec,
        x[split.train],
        x[split.calibration],
        name=name,
        version=version,
        stream=stream,
        config=config,
        training_info=info,
        created_at=created_at,
    )
    return RecipeResult(trained, split.evaluation, labels[split.evaluation])


def creditcard(
    table: Table, config: TrainConfig, version: int = 1, created_at: str | None = None
) -> RecipeResult:
    """V1..V28 and log(Amount); Time is left out: it counts seconds since the file began."""
    return train_on_table(
        table,
        features=CREDITCARD_FEATURES,
        label="Class",
        name="payments-fraud",
        stream="payments",
        version=version,
        config=config,
        log1p=("Amount",),
        created_at=created_at,
    )


def skab_windows(
    table: Table, spec: FeatureSpec
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int8]]:
    """Model inputs (windows over the scaled channels) and labels of one SKAB file."""
    x, _ = spec.transform(table.matrix(SKAB_FEATURES))
    labels = table.labels("anomaly")
    assert labels is not None
    return sliding_windows(x, spec.window), labels


SKAB_TRAIN_ROWS = 400
