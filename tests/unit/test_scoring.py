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


def payments_scorer() -> Scorer:
    trusted = load_trusted_keys(BUNDLES / "dev-signing-key.DEVELOPMENT-ONLY.pub.pem")
    return Scorer(load_bundle(BUNDLES / "payments-fraud.ewb", trusted))


def test_a_batch_scores_the_same_whatever_was_scored_before() -> None:
    """Padding rows of a bucket keep the previous batch's values; they must not leak."""
    width = payments_scorer().width
    rng = np.random.default_rng(11)
    small = rng.normal(size=(3, width)).astype(np.float32)
    fresh = payments_scorer().score(small)
    used = payments_scorer()
    used.score(rng.normal(scale=8.0, size=(8, width)).astype(np.float32))  # same bucket, full
    again = used.score(small)
    np.testing.assert_array_equal(again.scores, fresh.scores)
    np.testing.assert_array_equal(again.errors, fresh.errors)


def test_contributions_name_each_rows_largest_errors_largest_first() -> None:
    scorer = payments_scorer()
    errors = np.random.default_rng(3).random((70, scorer.width)).astype(np.float32)
    names = scorer.manifest.features.names
    for top_k in (1, 3, scorer.width + 5):
        contributions = scorer.contributions(errors, top_k)
        for row, found in zip(errors, contributions, strict=True):
            order = np.argsort(-row)[: min(top_k, scorer.width)]
            assert list(found) == [names[j] for j in order]
            assert list(found.values()) == pytest.approx([row[j] for j in order], abs=1e-6)
