"""The SKAB outlier-detection protocol, scored with int8 models through the edge scorer.

Per file: the first 400 rows are training data and the scaler is fitted on them; the rest
is test data. F1, FAR and MAR are computed over all test points of all files together.
Of the 400 training rows, the last ``calibration_rows`` set the threshold (held out).
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from models.bundle import Bundle, ScoreKind
from models.datasets import SKAB_FEATURES, Table, read_table, skab_files
from models.features import BaselineSpec, FeatureSpec, sliding_windows
from models.metrics import at_threshold
from models.scoring import Scorer
from models.training import TrainConfig, TrainedModel, calibrated, fit_model, unsigned_bundle

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


# -- machines the model never saw: one shipped model, per-device baselines -----------------------
# The shipped sensors model is trained on anomaly-free.csv and the warm-up rows of the files
# below it does not hold out; the held-out files are every third SKAB file (10 of 30, from
# valve1/ and other/), and only they measure it. Every choice (layers, denoising noise,
# deviation weight, threshold rule) is made by leave-files-out scores within the 20 training
# files (run_selection), never on these 10.
HELD_OUT_EVERY = 3
FREE_CHUNKS = 8  # anomaly-free.csv (9,405 rows) cut into device-sized recordings
UNSEEN_WINDOW = 40  # the shipped choice; --select --window scores others
SELECTION_QUANTILES = (0.99, 1.0)
SELECTION_MARGINS = (1.0, 1.25, 1.5, 2.0, 2.5, 3.0)
SELECTION_RULES = tuple((q, m) for q in SELECTION_QUANTILES for m in SELECTION_MARGINS)
DEVIATION_WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)
SCORE_KINDS: tuple[ScoreKind, ...] = ("max_feature_mse", "mse", "mae")


@dataclass(frozen=True)
class UnseenCandidate:
    """A model to cross-validate: its hidden layers and its denoising noise (0 = none).

    Named ``8-1-8`` or, denoising, ``16-4-16~0.3`` (noise std in device-scaled units).
    """

    hidden: tuple[int, ...]
    noise: float = 0.0

    @classmethod
    def parse(cls, name: str) -> UnseenCandidate:
        layers, _, noise = name.partition("~")
        try:
            hidden = tuple(int(u) for u in layers.split("-"))
            candidate = cls(hidden, float(noise) if noise else 0.0)
        except ValueError as exc:
            raise ValueError(f"candidate {name!r} is not like 8-1-8 or 16-4-16~0.3") from exc
        if len(hidden) != 3 or min(hidden) < 1 or candidate.noise < 0:
            raise ValueError(f"candidate {name!r}: three positive layer sizes, noise >= 0")
        return candidate

    @property
    def name(self) -> str:
        layers = "-".join(map(str, self.hidden))
        return f"{layers}~{self.noise:g}" if self.noise else layers


UNSEEN_CANDIDATES = (
    "4-1-4", "8-1-8", "8-1-8~0.1", "8-1-8~0.3", "8-1-8~1", "8-2-8", "16-1-16",
    "16-4-16", "16-4-16~0.1", "16-4-16~0.3", "16-4-16~1", "32-8-32",
)  # fmt: skip
# The shipped choice: the best pooled F1 of `edgewatch-models skab-unseen --select` over the
# candidates above (window 20) and 8-1-8, 16-4-16 at windows 10 and 40, each with every
# score kind, deviation weight and threshold rule (README has the table): 16-4-16, window
# 40, max_feature_mse, deviation weight 0.5, threshold 1.5 × the warm-up maximum.
UNSEEN_CHOICE = UnseenCandidate((16, 4, 16))
UNSEEN_SCORE_KIND: ScoreKind = "max_feature_mse"
UNSEEN_BASELINE = BaselineSpec(
    warmup_rows=TRAIN_ROWS, scale=True, scale_floor=0.01, threshold="device_quantile",
    quantile=1.0, margin=1.5, deviation_weight=0.5,
)  # fmt: skip


def unseen_split(paths: list[Path]) -> tuple[list[Path], list[Path]]:
    """(training files, held-out files) of the shipped sensors model."""
    held = [p for i, p in enumerate(paths) if i % HELD_OUT_EVERY == HELD_OUT_EVERY - 1]
    return [p for p in paths if p not in held], held


def file_key(path: Path) -> str:
    return f"{path.parent.name}/{path.name}"


def device_windows(raw: np.ndarray[Any, Any], spec: FeatureSpec,
                   baseline: BaselineSpec) -> np.ndarray[Any, Any]:  # fmt: skip
    """Model inputs of one device's series, scaled by its own warm-up rows.

    The agent's per-device baselines compute exactly this, one reading at a time.
    """
    values, _ = spec.clean(raw)
    center, scale = baseline.device_scaling(spec, values[: baseline.warmup_rows])
    return sliding_windows(spec.scale(values, center, scale), spec.window)


def train_unseen_model(
    free: np.ndarray[Any, Any],
    tables: list[Table],
    candidate: UnseenCandidate,
    *,
    window: int = UNSEEN_WINDOW,
    baseline: BaselineSpec = UNSEEN_BASELINE,
    score_kind: ScoreKind = UNSEEN_SCORE_KIND,
    version: int = 1,
    created_at: str | None = None,
    info: dict[str, Any] | None = None,
) -> TrainedModel:
    """One model for every device: device-scaled windows of anomaly-free data (in chunks,
    each a device) and of each training file's warm-up rows; the tail quarter of each
    part calibrates the manifest's threshold (used where a baseline names ``model``)."""
    options = SkabOptions(window=window)
    spec = fit_skab_spec(free, options)
    n = baseline.warmup_rows
    parts = [device_windows(c, spec, baseline) for c in np.array_split(free, FREE_CHUNKS)]
    parts += [device_windows(t.matrix(SKAB_FEATURES)[:n], spec, baseline) for t in tables]
    train, calibration = [], []
    for part in parts:
        cut = int(len(part) * 0.75)
        train.append(part[:cut])
        calibration.append(part[cut:])
    config = replace(options.config, hidden=candidate.hidden, noise=candidate.noise,
                     activations=("tanh", "relu", "tanh"), batch_size=128, epochs=60,
                     patience=8, score_kind=score_kind)  # fmt: skip
    trained = fit_model(
        spec,
        np.concatenate(train),
        np.concatenate(calibration),
        name="sensors-skab",
        version=version,
        stream="sensors",
        config=config,
        training_info=info,
        created_at=created_at,
    )
    manifest = trained.manifest.model_copy(update={"baseline": baseline})
    # The manifest's threshold again, now scored with the baseline's deviation weight.
    calibration_windows = np.concatenate(calibration)
    manifest = calibrated(manifest, trained.int8_model, calibration_windows, config)
    return replace(trained, manifest=manifest)


def score_unseen(
    scorer: Scorer, baseline: BaselineSpec, tables: list[Table]
) -> list[dict[str, Any]]:
    """Each file as one device: its scores, threshold and labels after the warm-up."""
    spec = scorer.manifest.features
    n = baseline.warmup_rows
    out = []
    for table in tables:
        scores = scorer.score(device_windows(table.matrix(SKAB_FEATURES), spec, baseline)).scores
        threshold = baseline.device_threshold(scores[:n], scorer.manifest.score.threshold)
        labels = table.labels("anomaly")
        assert labels is not None
        out.append({"file": file_key(table.path), "scores": scores[n:],
                    "threshold": threshold, "labels": labels[n:]})  # fmt: skip
    return out


def unseen_figures(scored: list[dict[str, Any]], margin: float = 1.0) -> dict[str, Any]:
    """Event-level precision, recall and F1 over every file's rows after its warm-up
    (``margin`` scales the device thresholds, for choosing a rule)."""
    predicted = [s["scores"] >= s["threshold"] * margin for s in scored]
    labels = np.concatenate([s["labels"] for s in scored])
    overall = at_threshold(labels, np.concatenate(predicted).astype(float), 0.5)
    per_file = [
        {"file": s["file"], **{k: round(v, 4) for k, v in at_threshold(
            s["labels"], p.astype(float), 0.5).items() if k in ("precision", "recall", "f1")}}
        for s, p in zip(scored, predicted, strict=True)
    ]  # fmt: skip
    keep = ("precision", "recall", "f1", "far", "mar", "confusion")
    return {**{k: overall[k] for k in keep}, "events": len(labels),
            "anomalies": int(labels.sum()), "per_file": per_file}  # fmt: skip


def run_unseen(root: Path, bundle: Bundle) -> dict[str, Any]:
    """The shipped model on the SKAB files it never trained on (listed in its manifest)."""
    manifest = bundle.manifest
    if manifest.baseline is None:
        raise ValueError(f"{bundle.label} has no per-device baseline in its manifest")
    held_out = manifest.training.get("held_out_files")
    if not held_out:
        raise ValueError(f"{bundle.label} does not list the files it held out")
    tables = [read_table(root / name) for name in held_out]
    result = unseen_figures(score_unseen(Scorer(bundle), manifest.baseline, tables))
    return {"model": bundle.label, "held_out_files": held_out,
            "baseline": manifest.baseline.model_dump(), **result}  # fmt: skip


def _scored_as(bundle: Bundle, kind: ScoreKind) -> Bundle:
    score = bundle.manifest.score.model_copy(update={"kind": kind})
    return replace(bundle, manifest=bundle.manifest.model_copy(update={"score": score}))


def _figures(scored: list[dict[str, Any]]) -> dict[str, float]:
    figures = unseen_figures(scored)
    return {k: round(figures[k], 4) for k in ("precision", "recall", "f1")}


def run_selection(
    root: Path,
    candidates: list[str],
    folds: int = 4,
    window: int = UNSEEN_WINDOW,
    *,
    all_files: bool = False,
    weights: tuple[float, ...] = DEVIATION_WEIGHTS,
    kinds: tuple[ScoreKind, ...] = SCORE_KINDS,
) -> dict[str, Any]:
    """Leave-files-out scores of candidate models within the training files only.

    The 20 training files are cut into ``folds`` groups; each group is scored by a model
    trained on anomaly-free.csv and the other groups' warm-up rows (int8, the edge
    scorer). Each model's reconstructions are scored with every score kind, every
    deviation weight (0: the autoencoder alone; 1: the device's own z-scores, no model)
    and every threshold rule
    (quantile × margin of a device's warm-up scores). A row gives the figures pooled over
    the events after warm-up of all files, each scored while held out, and per fold.
    ``all_files``: the same over all 30 files (an estimate for the recipe on more
    machines; the shipped model's 10 held-out files are in it, so it must not be used to
    choose).
    """
    train_paths, held_out = unseen_split(skab_files(root))
    if all_files:
        train_paths, held_out = train_paths + held_out, []
    tables = [read_table(p) for p in train_paths]
    free = read_table(root / "anomaly-free" / "anomaly-free.csv").matrix(SKAB_FEATURES)
    groups = [list(range(k, len(tables), folds)) for k in range(folds)]
    n = UNSEEN_BASELINE.warmup_rows
    rows = []
    for candidate in map(UnseenCandidate.parse, candidates):
        # (fold, kind, weight, rule) -> scored files
        scored: dict[tuple[int, str, float, tuple[float, float]], list[dict[str, Any]]] = {}
        for k, group in enumerate(groups):
            fit_on = [t for i, t in enumerate(tables) if i not in group]
            trained = train_unseen_model(free, fit_on, candidate, window=window)
            bundle = unsigned_bundle(trained.manifest, trained.int8_model)
            scorer = Scorer(bundle)
            scorers = {kind: Scorer(_scored_as(bundle, kind)) for kind in kinds}
            spec = scorer.manifest.features
            for i in group:
                windows = device_windows(tables[i].matrix(SKAB_FEATURES), spec, UNSEEN_BASELINE)
                reconstruction = scorer.reconstruct(windows)
                labels = tables[i].labels("anomaly")
                assert labels is not None
                for kind, weight in itertools.product(kinds, weights):
                    scores = scorers[kind].score_reconstructed(windows, reconstruction,
                                                               weight).scores  # fmt: skip
                    for quantile, margin in SELECTION_RULES:
                        device = UNSEEN_BASELINE.model_copy(
                            update={"quantile": quantile, "margin": margin})  # fmt: skip
                        threshold = device.device_threshold(scores[:n], 0.0)
                        scored.setdefault((k, kind, weight, (quantile, margin)), []).append(
                            {"file": file_key(tables[i].path), "scores": scores[n:],
                             "threshold": threshold, "labels": labels[n:]})  # fmt: skip
            log.info("%s: fold %d of %d done", candidate.name, k + 1, folds)
        for kind, weight, rule in itertools.product(kinds, weights, SELECTION_RULES):
            per_fold = [scored[(k, kind, weight, rule)] for k in range(folds)]
            pooled = unseen_figures([s for fold in per_fold for s in fold])
            rows.append({
                "candidate": candidate.name, "window": window, "score_kind": kind,
                "deviation_weight": weight, "quantile": rule[0], "margin": rule[1],
                **{k: round(pooled[k], 4) for k in ("precision", "recall", "f1")},
                "folds": [_figures(fold) for fold in per_fold],
                "per_file": pooled["per_file"],
            })  # fmt: skip
    best = max(rows, key=lambda r: r["f1"]) if rows else None
    return {"training_files": [file_key(p) for p in train_paths],
            "not_used": [file_key(p) for p in held_out], "folds": folds,
            "groups": [[file_key(train_paths[i]) for i in g] for g in groups],
            "best": best, "rows": rows}  # fmt: skip


def add_unseen_command(sub: Any) -> None:
    """``edgewatch-models skab-unseen``: the figure above, or (``--select``) the choice."""
    unseen = sub.add_parser(
        "skab-unseen",
        help="the sensors model on SKAB files it never trained on (per-device baselines)",
    )
    unseen.add_argument("--data", type=Path, required=True, help="SKAB folder")
    shipped = Path(__file__).resolve().parent / "bundles" / "sensors-skab.ewb"
    unseen.add_argument("--bundle", type=Path, default=shipped)
    unseen.add_argument("--trusted-keys", type=Path, help="default: the development key")
    unseen.add_argument("--select", metavar="NAMES",
                        help="leave-files-out scores within the training files instead "
                        "(trains; comma-separated, like 8-1-8 or 16-4-16~0.3 for denoising "
                        f"with noise 0.3; 'all' = {','.join(UNSEEN_CANDIDATES)})")  # fmt: skip
    unseen.add_argument("--weights", default=",".join(map(str, DEVIATION_WEIGHTS)),
                        help="with --select: deviation weights to score (0 = the "
                        "autoencoder alone, 1 = z-scores alone)")  # fmt: skip
    unseen.add_argument("--folds", type=int, default=4)
    unseen.add_argument("--window", type=int, default=UNSEEN_WINDOW,
                        help=f"with --select (default: the shipped {UNSEEN_WINDOW})")  # fmt: skip
    unseen.add_argument("--all-files", action="store_true",
                        help="with --select: folds over all 30 files (not to choose)")  # fmt: skip
    unseen.set_defaults(run=_cmd_unseen)


def _cmd_unseen(args: Any) -> int:
    import contextlib
    import json
    import sys

    from models.bundle import load_bundle, load_trusted_keys

    if args.select:
        names = list(UNSEEN_CANDIDATES) if args.select == "all" else args.select.split(",")
        weights = tuple(float(w) for w in args.weights.split(","))
        with contextlib.redirect_stdout(sys.stderr):  # TensorFlow prints to stdout
            result = run_selection(args.data, names, args.folds, args.window,
                                   all_files=args.all_files, weights=weights)  # fmt: skip
    else:
        keys = args.trusted_keys or args.bundle.parent / "dev-signing-key.DEVELOPMENT-ONLY.pub.pem"
        result = run_unseen(args.data, load_bundle(args.bundle, load_trusted_keys(keys)))
    print(json.dumps(result, indent=2))
    return 0
