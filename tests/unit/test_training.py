"""A tiny training run gives an int8 bundle that ranks rows like its float model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tensorflow", reason="training needs the 'train' extra")

from models.bundle import load_bundle, load_private_key, load_trusted_keys, sign_bundle
from models.features import FeatureSpec
from models.scoring import Scorer
from models.training import TrainConfig, fit_model, unsigned_bundle
from tests.helpers import make_keys

pytestmark = pytest.mark.slow


def low_rank_rows(rng: np.random.Generator, n: int) -> np.ndarray:
    """Eight correlated columns driven by two latent factors, plus a little noise."""
    latent = rng.normal(size=(n, 2))
    mixing = np.array(
        [[1, 0.5, -1, 0.2, 0.8, -0.3, 0.1, 1.2], [0.3, -1, 0.4, 1, -0.6, 0.9, 1.1, 0]]
    )
    return latent @ mixing + rng.normal(scale=0.05, size=(n, 8))


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    rank_a = np.argsort(np.argsort(a))
    rank_b = np.argsort(np.argsort(b))
    return float(np.corrcoef(rank_a, rank_b)[0, 1])


def test_int8_bundle_ranks_like_float_model(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    names = [f"f{i}" for i in range(8)]
    normal = low_rank_rows(rng, 1500)
    spec = FeatureSpec.fit(names, normal[:1000], clip=10.0)
    x, _ = spec.transform(normal)
    config = TrainConfig(hidden=(6, 3, 6), epochs=40, batch_size=32, progress=False, seed=3)
    trained = fit_model(
        spec, x[:1000], x[1000:], name="tiny", version=1, stream="sensors", config=config
    )
    manifest = trained.manifest
    assert manifest.quantization == "int8"
    assert manifest.input.dtype == "int8"
    assert manifest.score.threshold > 0

    # Test rows: fresh normals and off-manifold rows of growing size.
    test = np.concatenate([low_rank_rows(rng, 300), rng.normal(scale=2.0, size=(100, 8))])
    test_x, _ = spec.transform(test)
    int8_scores = Scorer(unsigned_bundle(manifest, trained.int8_model)).score(test_x).scores
    float_scores = Scorer(trained.float_bundle()).score(test_x).scores
    assert spearman(int8_scores, float_scores) >= 0.95
    # The model learnt something: off-manifold rows score above fresh normal ones.
    assert np.median(int8_scores[300:]) > 3 * np.median(int8_scores[:300])

    # Signed and reloaded, the bundle scores the same.
    private, public = make_keys(tmp_path / "keys")
    path = tmp_path / "tiny.ewb"
    path.write_bytes(sign_bundle(manifest, trained.int8_model, load_private_key(private)))
    bundle = load_bundle(path, load_trusted_keys(public))
    np.testing.assert_array_equal(Scorer(bundle).score(test_x).scores, int8_scores)
