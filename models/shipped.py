"""The bundles shipped in models/bundles, rebuilt reproducibly by ``build-bundles``.

Seeds, splits, ``created_at`` and TensorFlow's deterministic ops fix the model bytes; an
Ed25519 signature is deterministic too, so the same key yields byte-identical bundles.
The signing key is a development key: its public half is committed, marked as such.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from models import recipes, skab
from models.bundle import generate_keypair, key_id, load_private_key, load_public_key, sign_bundle
from models.datasets import SKAB_FEATURES, read_table, skab_files, write_rows
from models.evaluation import evaluate, metrics_summary
from models.scoring import Scorer
from models.training import TrainConfig, TrainedModel, unsigned_bundle

log = logging.getLogger(__name__)

CREATED_AT = "2026-11-23T00:00:00+00:00"
# A shipped model whose bytes change takes the next version: a box only ever moves to a
# higher one (what it promoted and stored beats a configured file of the same version).
# sensors-skab 1 was the 8-1-8 model; 2 the 16-4-16 one with the blended score.
SENSORS_VERSION = 2
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
    """One windowed model for the 8 SKAB channels of any machine, with per-device baselines.

    Training: anomaly-free.csv and the first 400 rows of 20 of the 30 SKAB files, each
    scaled by its own first 400 rows (as the agent scales each device); evaluation: the
    other 10 files, each a device the model never saw (``edgewatch-models skab-unseen``).
    Every choice (layers, noise, window, score kind, deviation weight, threshold rule):
    leave-files-out within the 20 (``--select``), see :data:`models.skab.UNSEEN_CHOICE`.
    """
    root = datasets / "skab"
    train_paths, held_out = skab.unseen_split(skab_files(root))
    free = read_table(root / "anomaly-free" / "anomaly-free.csv").matrix(SKAB_FEATURES)
    trained = skab.train_unseen_model(
        free,
        [read_table(p) for p in train_paths],
        skab.UNSEEN_CHOICE,
        version=SENSORS_VERSION,
        created_at=CREATED_AT,
        info={
            "source": "SKAB anomaly-free.csv + first 400 rows of 20 files, each scaled by "
            "its own first 400 rows",
            "training_files": [skab.file_key(p) for p in train_paths],
            "held_out_files": [skab.file_key(p) for p in held_out],
            "selection": "leave-files-out within the training files, 4 folds of 5 "
            "(edgewatch-models skab-unseen --select): layers, denoising noise, window, "
            "score kind, deviation weight and threshold rule by pooled F1",
        },
    )
    baseline = trained.manifest.baseline
    assert baseline is not None
    tables = [read_table(p) for p in held_out]
    int8_scorer = Scorer(unsigned_bundle(trained.manifest, trained.int8_model))
    report = skab.unseen_figures(skab.score_unseen(int8_scorer, baseline, tables))
    float_report = skab.unseen_figures(
        skab.score_unseen(Scorer(trained.float_bundle()), baseline, tables)
    )
    metrics: dict[str, object] = {
        "held_out_files": len(tables),
        "events": report["events"],
        "anomalies": report["anomalies"],
        **{k: round(report[k], 4) for k in ("precision", "recall", "f1", "far", "mar")},
        "confusion": report["confusion"],
        "float_f1": round(float_report["f1"], 4),
    }
    return trained, metrics


def build_shipped_bundles(datasets: Path, key_path: Path, out_dir: Path) -> list[Path]:
    private = _dev_key(key_path, out_dir)
    written = []
    for trained, metrics in (build_payments(datasets, out_dir), build_sensors(datasets)):
        manifest = trained.manifest.model_copy(update={"metrics": metrics})
        path = out_dir / f"{manifest.name}.ewb"
        path.write_bytes(sign_bundle(manifest, trained.int8_model, private))
        written.append(path)
    return written
