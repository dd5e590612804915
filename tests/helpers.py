"""Small builders shared by tests (no brokers, no TensorFlow)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from models.bundle import Manifest, ScoreSpec, TensorSpec, generate_keypair
from models.features import FeatureSpec, FieldSpec


def make_keys(directory: Path, name: str = "test") -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    private, public = directory / f"{name}.key.pem", directory / f"{name}.pub.pem"
    generate_keypair(private, public)
    return private, public


def make_manifest(model: bytes, **overrides: object) -> Manifest:
    values: dict[str, object] = {
        "name": "demo",
        "version": 1,
        "stream": "payments",
        "created_at": "2026-01-01T00:00:00+00:00",
        "features": FeatureSpec(fields=(FieldSpec(name="a"), FieldSpec(name="b"))),
        "score": ScoreSpec(threshold=1.0, calibration_quantile=0.99),
        "quantization": "int8",
        "input": TensorSpec(dtype="int8", scale=0.1, zero_point=0),
        "output": TensorSpec(dtype="int8", scale=0.1, zero_point=0),
        "model_sha256": hashlib.sha256(model).hexdigest(),
    }
    values.update(overrides)
    return Manifest(**values)  # type: ignore[arg-type]
