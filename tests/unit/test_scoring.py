"""The edge scorer: each score kind is the error the manifest names."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from models.bundle import Bundle, ScoreKind, load_bundle, load_trusted_keys
from models.scoring import Scorer

BUNDLES = Path(__file__).resolve().parents[2] / "models" / "bundles"


def scored_as(bundle: Bundle, kind: ScoreKind) -> Scorer:
    score = bundle.manifest.score.model_copy(update={"kind": kind})
    return Scorer(replace(bundle, manifest=bundle.manifest.model_copy(update={"score": score})))


@pytest.mark.parametrize("name", ["payments-fraud", "sensors-skab"])  # window 1 and 20
def test_each_kind_aggregates_the_reconstruction_error(name: str) -> None:
    trusted = load_trusted_keys(BUNDLES / "dev-signing-key.DEVELOPMENT-ONLY.pub.pem")
    bundle = load_bundle(BUNDLES / f"{name}.ewb", trusted)
    spec = bundle.manifest.features
    inputs = np.random.default_rng(5).normal(size=(50, spec.input_width)).astype(np.float32)
    diff = inputs - Scorer(bundle).reconstruct(inputs)
    squared = np.square(diff)
    per_feature = squared.reshape(50, spec.window, spec.width).mean(axis=1)

    mse = scored_as(bundle, "mse").score(inputs)
    worst = scored_as(bundle, "max_feature_mse").score(inputs)
    mae = scored_as(bundle, "mae").score(inputs)
    np.testing.assert_allclose(mse.scores, squared.mean(axis=1), rtol=1e-5)
    np.testing.assert_allclose(worst.scores, per_feature.max(axis=1), rtol=1e-5)
    np.testing.assert_allclose(mae.scores, np.abs(diff).mean(axis=1), rtol=1e-5)
    np.testing.assert_array_equal(worst.errors, mse.errors)  # contributions see the same
    assert (worst.scores >= mse.scores).all()
