"""Model quality on the real data sets (skipped with a reason when ../shared is absent)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from models.bundle import load_bundle, load_trusted_keys
from models.datasets import read_table
from models.evaluation import evaluate
from models.skab import UNSEEN_CANDIDATES, UnseenCandidate, run_unseen

REPO = Path(__file__).resolve().parents[2]
BUNDLES = REPO / "models" / "bundles"
KEY = BUNDLES / "dev-signing-key.DEVELOPMENT-ONLY.pub.pem"


def test_evaluate_cli_prints_the_documented_json_keys() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "models.cli", "evaluate", str(BUNDLES / "payments-fraud.ewb"),
         "--data", str(REPO / "models" / "samples" / "payments-holdout.csv"), "--json"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    report = json.loads(result.stdout)
    for key in ("roc_auc", "pr_auc", "precision", "recall", "f1", "threshold", "rows"):
        assert key in report
    assert report["rows"] == 1038
    assert report["roc_auc"] >= 0.95


@pytest.mark.slow
def test_creditcard_int8_goal_on_held_out_rows(datasets: Path, tmp_path: Path) -> None:
    pytest.importorskip("tensorflow", reason="training needs the 'train' extra")
    from models import recipes
    from models.datasets import read_table, write_rows
    from models.training import TrainConfig, unsigned_bundle

    source = datasets / "creditcard" / "creditcard_head.csv"
    table = read_table(source)
    result = recipes.creditcard(table, TrainConfig(progress=False))
    assert int(result.eval_labels.sum()) == 38, "every fraud must be in the evaluation rows"
    trained_rows = set(np.flatnonzero(table.labels("Class") == 0)) - set(result.eval_rows)
    assert trained_rows.isdisjoint(result.eval_rows)
    held_out = tmp_path / "eval.csv"
    write_rows(source, result.eval_rows, held_out)
    trained = result.trained
    report = evaluate(unsigned_bundle(trained.manifest, trained.int8_model), held_out,
                      trained.float_bundle())  # fmt: skip
    print(f"int8 ROC-AUC {report['roc_auc']:.4f}, float {report['float']['roc_auc']:.4f}")
    assert report["roc_auc"] >= 0.95
    assert abs(report["roc_auc"] - report["float"]["roc_auc"]) <= 0.005


def test_shipped_payments_bundle_records_its_held_out_metrics() -> None:
    bundle = load_bundle(BUNDLES / "payments-fraud.ewb", load_trusted_keys(KEY))
    metrics = bundle.manifest.metrics
    assert metrics["roc_auc"] >= 0.95
    assert abs(metrics["roc_auc"] - metrics["float_roc_auc"]) <= 0.005
    assert "Time" not in bundle.manifest.reads_fields


def test_shipped_sensors_model_detects_anomalies_on_machines_it_never_saw(datasets: Path) -> None:
    """Through the agent's own pipeline (`edgewatch-agent score`), one device per file."""
    sensors = BUNDLES / "sensors-skab.ewb"
    manifest = load_bundle(sensors, load_trusted_keys(KEY)).manifest
    assert manifest.baseline is not None
    assert manifest.baseline.warmup_rows == 400
    held_out = manifest.training["held_out_files"]
    assert len(held_out) == 10
    assert set(held_out).isdisjoint(manifest.training["training_files"])
    files = [str(datasets / "skab" / name) for name in held_out]
    result = subprocess.run(
        [sys.executable, "-m", "agent.cli", "score", str(sensors), *files,
         "--trusted-keys", str(KEY), "--quality"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    quality = json.loads(result.stdout)
    print("unseen machines:", {k: quality[k] for k in ("precision", "recall", "f1", "events")})
    assert quality["events"] == sum(len(read_table(Path(f))) - 400 for f in files)
    assert quality["f1"] >= 0.80  # the goal; measured 0.827 (see README)
    # The models-side figure (skab-unseen, recorded in the manifest) is the same computation.
    assert quality["f1"] == pytest.approx(manifest.metrics["f1"], abs=1e-4)
    offline = run_unseen(datasets / "skab", load_bundle(sensors, load_trusted_keys(KEY)))
    assert offline["confusion"] == quality["confusion"]


def test_selection_candidates_name_layers_and_denoising_noise() -> None:
    assert UnseenCandidate.parse("16-4-16~0.3") == UnseenCandidate((16, 4, 16), 0.3)
    assert UnseenCandidate.parse("8-1-8").noise == 0.0
    assert [UnseenCandidate.parse(n).name for n in UNSEEN_CANDIDATES] == list(UNSEEN_CANDIDATES)
    for bad in ("8-x-8", "8-1", "8-1-8~-1"):
        with pytest.raises(ValueError, match="candidate"):
            UnseenCandidate.parse(bad)
