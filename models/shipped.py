"""The bundles shipped in models/bundles, rebuilt reproducibly by ``build-bundles``.

Seeds, splits, ``created_at`` and TensorFlow's deterministic ops fix the model bytes; an
Ed25519 signature is deterministic too, so the same key yields byte-identical bundles.
The signing key is a development key: its public half is committed, marked as such.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from models import recipes
from models.bundle import generate_keypair, key_id, load_private_key, load_public_key, sign_bundle
from models.datasets import SKAB_FEATURES, read_table, skab_files, write_rows
from models.evaluation import evaluate, metrics_summary
from models.features import sliding_windows
from models.skab import TRAIN_ROWS, SkabOptions, fit_skab_spec
from models.training import TrainConfig, TrainedModel, fit_model, unsigned_bundle

log = logging.getLogger(__name__)

CREATED_AT = "2026-11-23T00:00:00+00:00"
PUBLIC_KEY_NAME = "dev-signing-key.DEVELOPMENT-ONLY.pub.pem"
SAMPLES = Path(__file__).resolve().parent / "samples"


def _dev_key(key_path: Path, out_dir: Path) -> Ed25519PrivateKey:
    public_path = out_dir / PUBLIC_KEY_NAME
    if not key_path.exists():
        key_path.parent.mkdir(parents=True, exist_ok=True)
        generate_keypair(key_path, key_path.with_suffix(".pub.pem"))
        log.warning("generated a new development key %s", key_path)
    private = load_private_key(key_path)
    committed = load_public_key(public_path) if public_path.exists() else None
    if committed is None or key_id(committed) != key_id(private.public_key()):
        public_path.write_bytes(
            private.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
        log.warning("wrote the public half of %s to %s", key_path, public_path)
    return private


def build_payments(datasets: Path, out_dir: Path) -> tuple[TrainedModel, dict[str, object]]:
    source = datasets / "creditcard" / "creditcard_head.csv"
    table = read_table(source)
    result = recipes.creditcard(table, TrainConfig(progress=False), created_at=CREATED_AT)
    SAMPLES.mkdir(exist_ok=True)
    holdout = SAMPLES / "payments-holdout.csv"
    # All held-out frauds and the first 1,000 held-out normal rows: the demo's fallback data.
    normal = result.eval_rows[result.eval_labels == 0][:1000]
    rows = np.sort(np.concatenate([normal, result.eval_rows[result.eval_labels == 1]]))
    write_rows(source, rows, holdout)
    full_holdout = out_dir / ".payments-eval.csv"
    write_rows(source, result.eval_rows, full_holdout)
    trained = result.trained
    report = evaluate(
        unsigned_bundle(trained.manifest, trained.int8_model),
        full_holdout,
        trained.float_bundle(),
    )
    full_holdout.unlink()
    return trained, metrics_summary(report)


def build_sensors(datasets: Path) -> tuple[TrainedModel, dict[str, object]]:
    """One windowed model for the 8 SKAB channels, from normal data only.

    Training: anomaly-free.csv plus the first 400 rows of each test file (the rows the
    SKAB protocol marks as training data); evaluation: the remaining rows of the 30 files.
    """
    options = SkabOptions()
    window = options.window
    tables = [read_table(p) for p in skab_files(datasets / "skab")]
    free = read_table(datasets / "skab" / "anomaly-free" / "anomaly-free.csv")
    normal_parts = [free.matrix(SKAB_FEATURES)] + [
        t.matrix(SKAB_FEATURES)[:TRAIN_ROWS] for t in tables
    ]
    spec = fit_skab_spec(np.concatenate(normal_parts), options)
    train, calibration = [], []
    for part in normal_parts:
        windows = sliding_windows(spec.transform(part)[0], window)
        cut = int(len(windows) * 0.75)
        train.append(windows[:cut])
        calibration.append(windows[cut:])
    trained = fit_model(
        spec,
        np.concatenate(train),
        np.concatenate(calibration),
        name="sensors-skab",
        version=1,
        stream="sensors",
        # Fifty times the rows of one SKAB file: bigger batches, fewer epochs.
        config=replace(options.config, batch_size=128, epochs=60, patience=8),
        training_info={"source": "SKAB anomaly-free + first 400 rows of valve1/, other/"},
        created_at=CREATED_AT,
    )
    from models.metrics import detection_report
    from models.scoring import Scorer

    scorer = Scorer(unsigned_bundle(trained.manifest, trained.int8_model))
    float_scorer = Scorer(trained.float_bundle())
    scores, float_scores, labels = [], [], []
    for table in tables:
        windows = sliding_windows(spec.transform(table.matrix(SKAB_FEATURES))[0], window)
        scores.append(scorer.score(windows[TRAIN_ROWS:]).scores)
        float_scores.append(float_scorer.score(windows[TRAIN_ROWS:]).scores)
        labels.append(table.labels("anomaly")[TRAIN_ROWS:])  # type: ignore[index]
    threshold = trained.manifest.score.threshold
    report = detection_report(np.concatenate(labels), np.concatenate(scores), threshold)
    report["float"] = detection_report(
        np.concatenate(labels), np.concatenate(float_scores), threshold
    )
    return trained, metrics_summary(report)


def build_shipped_bundles(datasets: Path, key_path: Path, out_dir: Path) -> list[Path]:
    private = _dev_key(key_path, out_dir)
    written = []
    for trained, metrics in (build_payments(datasets, out_dir), build_sensors(datasets)):
        manifest = trained.manifest.model_copy(update={"metrics": metrics})
        path = out_dir / f"{manifest.name}.ewb"
        path.write_bytes(sign_bundle(manifest, trained.int8_model, private))
        written.append(path)
    return written
