"""Bundles load only when container, signature, signer and model digest all check out."""

from __future__ import annotations

import base64
import io
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from models.bundle import (
    BundleFormatError,
    DigestMismatchError,
    SignatureError,
    UntrustedKeyError,
    load_bundle,
    load_private_key,
    load_trusted_keys,
    sign_bundle,
    verify_bundle,
)
from tests.helpers import make_keys, make_manifest

MODEL = b"TFL3-not-really-a-model-but-bytes-to-sign"


@pytest.fixture
def signed(tmp_path: Path) -> tuple[bytes, Path]:
    private, _public = make_keys(tmp_path / "keys")
    data = sign_bundle(make_manifest(MODEL), MODEL, load_private_key(private))
    return data, tmp_path / "keys"


def rewrite(data: bytes, name: str, content: bytes) -> bytes:
    """The same bundle with one member replaced."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            dst.writestr(info.filename, content if info.filename == name else src.read(info))
    return out.getvalue()


def test_round_trip_and_deterministic(signed: tuple[bytes, Path], tmp_path: Path) -> None:
    data, keys = signed
    path = tmp_path / "demo.ewb"
    path.write_bytes(data)
    bundle = load_bundle(path, load_trusted_keys(keys))
    assert bundle.model == MODEL
    assert bundle.manifest == make_manifest(MODEL)
    private = load_private_key(keys / "test.key.pem")
    assert sign_bundle(make_manifest(MODEL), MODEL, private) == data


def test_tampered_manifest_is_rejected(signed: tuple[bytes, Path]) -> None:
    data, keys = signed
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        manifest = archive.read("manifest.json")
    tampered = rewrite(
        data, "manifest.json", manifest.replace(b'"threshold": 1.0', b'"threshold": 9.0')
    )
    with pytest.raises(SignatureError, match="does not verify"):
        verify_bundle(tampered, load_trusted_keys(keys))


def test_tampered_model_is_rejected(signed: tuple[bytes, Path]) -> None:
    data, keys = signed
    with pytest.raises(DigestMismatchError, match="sha256"):
        verify_bundle(rewrite(data, "model.tflite", MODEL + b"!"), load_trusted_keys(keys))


def test_bad_signature_is_rejected(signed: tuple[bytes, Path]) -> None:
    data, keys = signed
    private = load_private_key(keys / "test.key.pem")
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        record = json.loads(archive.read("signature.json"))
    # A genuine signature by the right key, but over other bytes.
    record["signature"] = base64.b64encode(private.sign(b"some other manifest")).decode()
    forged = rewrite(data, "signature.json", json.dumps(record).encode())
    with pytest.raises(SignatureError, match="does not verify"):
        verify_bundle(forged, load_trusted_keys(keys))


def test_unknown_key_is_rejected(signed: tuple[bytes, Path], tmp_path: Path) -> None:
    data, _keys = signed
    _private, other_public = make_keys(tmp_path / "other", "other")
    with pytest.raises(UntrustedKeyError, match="not trusted"):
        verify_bundle(data, load_trusted_keys(other_public))


@pytest.mark.parametrize("junk", [b"", b"not a zip at all", b"PK\x03\x04broken"])
def test_not_a_bundle_is_a_format_error(junk: bytes, signed: tuple[bytes, Path]) -> None:
    with pytest.raises(BundleFormatError):
        verify_bundle(junk, load_trusted_keys(signed[1]))


def test_extra_member_is_rejected(signed: tuple[bytes, Path]) -> None:
    data, keys = signed
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info))
        dst.writestr("evil.sh", b"#!/bin/sh")
    with pytest.raises(BundleFormatError, match="members"):
        verify_bundle(out.getvalue(), load_trusted_keys(keys))


def test_bundle_features_and_scoring_never_import_tensorflow() -> None:
    code = (
        "import sys; import models.bundle, models.features, models.scoring, models.datasets,"
        " models.metrics, models.evaluation, agent, bridge;"
        " bad = [m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras')];"
        " print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


SHIPPED = Path(__file__).resolve().parents[2] / "models" / "bundles"
NO_TENSORFLOW = "import sys; sys.modules['tensorflow'] = sys.modules['keras'] = None; "


@pytest.mark.parametrize("name", ["payments-fraud", "sensors-skab"])
def test_shipped_bundles_score_with_tensorflow_unimportable(name: str, tmp_path: Path) -> None:
    """The agent's offline scorer on each shipped bundle, in a process where importing
    TensorFlow or Keras fails: scoring needs only the TFLite runtime."""
    from models.bundle import load_bundle, load_trusted_keys

    keys = SHIPPED / "dev-signing-key.DEVELOPMENT-ONLY.pub.pem"
    fields = load_bundle(SHIPPED / f"{name}.ewb", load_trusted_keys(keys)).manifest.reads_fields
    rows = [",".join(str(0.5 + (i * j) % 7 / 10) for j in range(len(fields))) for i in range(30)]
    data = tmp_path / "rows.csv"
    data.write_text(",".join(fields) + "\n" + "\n".join(rows) + "\n")
    args = ["score", str(SHIPPED / f"{name}.ewb"), str(data), "--trusted-keys", str(keys)]
    code = NO_TENSORFLOW + f"from agent.cli import main; sys.exit(main({args!r}))"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(events) == 30
    assert all(isinstance(e["score"], float) and e["model"]["name"] == name for e in events)
