"""The SKAB outlier-detection protocol, scored with int8 models through the edge scorer.

Per file: the first 400 rows are training data and the scaler is fitted on them; the rest
is test data. F1, FAR and MAR are computed over all test points of all files together.
Of the 400 training rows, the last ``calibration_rows`` set the threshold (held out).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from models.datasets import SKAB_FEATURES, Table, read_table, skab_files
from models.features import FeatureSpec, sliding_windows
from models.metrics import at_threshold
from models.scoring import Scorer
from models.training import TrainConfig, TrainedModel, fit_model, unsigned_bundle

log = logging.getLogger(__name__)

TRAIN_ROWS = 400
PUBLISHED_F1 = {
    "Conv-AE": 0.78,
    "MSET": 0.78,
    "PCA T²+Q": 0.76,
    "LSTM-AE": 0.74,
    "vanilla AE": 0.39,
    "Isolation Forest": 0.29,
}


@dataclass
class SkabOptions:
    window: int = 20
    calibration_rows: int = 100
    # Scales at least 1 % of each channel's level (see FeatureSpec.fit): the 400 training
    # rows of a file often hold a channel almost still.
    scale_floor: float = 0.01
    config: TrainConfig = field(
        default_factory=lambda: TrainConfig(
            hidden=(32, 8, 32), activations=("tanh", "relu", "tanh"), epochs=150,
            batch_size=16, patience=15, calibration_quantile=0.99, progress=False,
            l1_activity=0.0, threshold_margin=1.5, score_kind="max_feature_mse",
        )
    )  # fmt: skip


def fit_skab_spec(normal_raw: np.ndarray[Any, Any], options: SkabOptions) -> FeatureSpec:
    """The feature spec of a SKAB model: the 8 channels, windowed, scaled on normal rows."""
    return FeatureSpec.fit(SKAB_FEATURES, normal_raw, window=options.window, clip=10.0,
                           scale_floor=options.scale_floor)  # fmt: skip


def train_skab_model(
    train_raw: np.ndarray[Any, Any],
    options: SkabOptions,
    *,
    name: str = "sensors-skab",
    version: int = 1,
    created_at: str | None = None,
    info: dict[str, Any] | None = None,
) -> TrainedModel:
    """A windowed model over the 8 channels from normal rows (scaler fitted on all of them)."""
    spec = fit_skab_spec(train_raw, options)
    x, _ = spec.transform(train_raw)
    windows = sliding_windows(x, options.window)
    split = len(windows) - options.calibration_rows
    return fit_model(
        spec,
        windows[:split],
        windows[split:],
        name=name,
        version=version,
        stream="sensors",
        config=options.config,
        training_info=info,
        created_at=created_at,
    )


def score_file(table: Table, options: SkabOptions) -> tuple[np.ndarray[Any, Any], ...]:
    """Train on the file's first rows, score its test rows: (scores, labels, threshold)."""
    raw = table.matrix(SKAB_FEATURES)
    labels = table.labels("anomaly")
    assert labels is not None
    trained = train_skab_model(raw[:TRAIN_ROWS], options, info={"source": table.path.name})
    spec = trained.manifest.features
    x, _ = spec.transform(raw)
    # Windows run over the whole file, so the first test windows hold training rows,
    # exactly as a device streaming continuously would present them.
    windows = sliding_windows(x, spec.window)[TRAIN_ROWS:]
    scorer = Scorer(unsigned_bundle(trained.manifest, trained.int8_model))
    scores = scorer.score(windows).scores
    threshold = trained.manifest.score.threshold
    return scores, labels[TRAIN_ROWS:], np.full(len(scores), threshold)


def run_benchmark(root: Path, options: SkabOptions | None = None) -> dict[str, Any]:
    """F1, FAR and MAR over all test points of the 30 SKAB files."""
    options = options or SkabOptions()
    all_predicted, all_labels, per_file = [], [], []
    for path in skab_files(root):
        scores, labels, thresholds = score_file(read_table(path), options)
        predicted = scores >= thresholds
        all_predicted.append(predicted)
        all_labels.append(labels)
        file_result = at_threshold(labels, predicted.astype(float), 0.5)
        per_file.append({"file": f"{path.parent.name}/{path.name}", "f1": file_result["f1"]})
        log.info("%s: f1 %.3f", path, file_result["f1"])
    predicted = np.concatenate(all_predicted).astype(float)
    labels = np.concatenate(all_labels)
    overall = at_threshold(labels, predicted, 0.5)
    return {
        "f1": overall["f1"],
        "far": overall["far"],
        "mar": overall["mar"],
        "precision": overall["precision"],
        "recall": overall["recall"],
        "files": len(per_file),
        "test_points": len(labels),
        "window": options.window,
        "architecture": list(options.config.hidden),
        "calibration_quantile": options.config.calibration_quantile,
        "threshold_margin": options.config.threshold_margin,
        "score_kind": options.config.score_kind,
        "scale_floor": options.scale_floor,
        "per_file": per_file,
        "published_f1": PUBLISHED_F1,
    }


def with_options(options: SkabOptions, **changes: Any) -> SkabOptions:
    config_changes = {k: v for k, v in changes.items() if hasattr(options.config, k)}
    own = {k: v for k, v in changes.items() if k not in config_changes}
    return replace(options, config=replace(options.config, **config_changes), **own)
