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


@pytest.mark.parametrize("name", ["payments-fraud", "sensors-skab"])  # window 1 and 40
def test_each_kind_aggregates_the_reconstruction_error(name: str) -> None:
    trusted = load_trusted_keys(BUNDLES / "dev-signing-key.DEVELOPMENT-ONLY.pub.pem")
    bundle = load_bundle(BUNDLES / f"{name}.ewb", trusted)
    if bundle.manifest.baseline is not None:  # the reconstruction error alone (see below)
        baseline = bundle.manifest.baseline.model_copy(update={"deviation_weight": 0.0})
        bundle = replace(bundle, manifest=bundle.manifest.model_copy(update={"baseline": baseline}))
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


@pytest.mark.parametrize("kind", ["mse", "max_feature_mse", "mae"])
def test_deviation_weight_blends_the_input_itself_into_each_error(kind: ScoreKind) -> None:
    trusted = load_trusted_keys(BUNDLES / "dev-signing-key.DEVELOPMENT-ONLY.pub.pem")
    bundle = load_bundle(BUNDLES / "sensors-skab.ewb", trusted)
    assert bundle.manifest.baseline is not None
    spec = bundle.manifest.features
    inputs = np.random.default_rng(7).normal(size=(40, spec.input_width)).astype(np.float32)
    plain = scored_as(bundle, kind)
    reconstruction = plain.reconstruct(inputs)
    measure = np.square if kind != "mae" else np.abs
    for weight in (0.0, 0.3, 1.0):
        baseline = bundle.manifest.baseline.model_copy(update={"deviation_weight": weight})
        manifest = plain.manifest.model_copy(update={"baseline": baseline})
        scorer = Scorer(replace(bundle, manifest=manifest))
        blended = scorer.score(inputs)
        expected = (1 - weight) * measure(inputs - reconstruction) + weight * measure(inputs)
        np.testing.assert_allclose(blended.errors, expected, rtol=1e-5, atol=1e-6)
        same = scorer.score_reconstructed(inputs, reconstruction, weight)
        np.testing.assert_array_equal(same.scores, blended.scores)
    # Weight 1 needs no model at all: the score is the inputs' own size.
    per_feature = np.square(inputs).reshape(40, spec.window, spec.width).mean(axis=1)
    if kind == "max_feature_mse":
        np.testing.assert_allclose(blended.scores, per_feature.max(axis=1), rtol=1e-5)
