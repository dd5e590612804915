"""The production-keys flow, one test per step (README "Production keys").

1. create a production key; 2. re-sign the shipped (dev-signed) bundles centrally, and a
box trusting only the production key scores with them exactly as with the originals;
3. trust two keys during a rotation; 4. revoke the old key: bundles signed only by it are
refused. ``python -m models.signing check`` is what install.sh runs on the box.
"""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from models.bundle import UntrustedKeyError, load_bundle, load_trusted_keys, read_unverified
from models.cli import main as models_main

REPO = Path(__file__).resolve().parents[2]
BUNDLES = REPO / "models" / "bundles"
DEV_KEY = BUNDLES / "dev-signing-key.DEVELOPMENT-ONLY.pub.pem"
SHIPPED = sorted(BUNDLES.glob("*.ewb"))


def _keygen(directory: Path, name: str) -> tuple[Path, Path]:
    assert models_main(["keygen", "--out-dir", str(directory), "--name", name]) == 0
    return directory / f"{name}.key.pem", directory / f"{name}.pub.pem"


def _sign(bundles: list[Path], key: Path, trusted: Path, out: Path) -> list[Path]:
    args = [str(b) for b in bundles]
    assert models_main(["sign", *args, "--key", str(key), "--trusted-keys", str(trusted),
                        "--out-dir", str(out)]) == 0  # fmt: skip
    return [out / b.name for b in bundles]


def _trust(directory: Path, *keys: Path) -> Path:
    directory.mkdir()
    for key in keys:
        (directory / key.name).write_bytes(key.read_bytes())
    return directory


def _check(trusted: Path, bundles: list[Path]) -> int:
    command = [sys.executable, "-m", "models.signing", "check", "--trusted-keys", str(trusted)]
    done = subprocess.run([*command, *map(str, bundles)], capture_output=True, check=False)
    return done.returncode


def test_step1_keygen_makes_a_private_key_only_its_owner_reads(tmp_path: Path) -> None:
    private, public = _keygen(tmp_path, "production")
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert b"PRIVATE KEY" in private.read_bytes()
    assert len(load_trusted_keys(public)) == 1
    # A directory holding both halves trusts the public one only.
    assert list(load_trusted_keys(tmp_path)) == list(load_trusted_keys(public))


def test_step2_resigned_shipped_bundles_load_with_the_production_key_only(tmp_path: Path) -> None:
    private, public = _keygen(tmp_path / "keys", "production")
    signed = _sign(SHIPPED, private, DEV_KEY, tmp_path / "out")
    production = load_trusted_keys(public)
    for original, copy in zip(SHIPPED, signed, strict=True):
        assert load_bundle(copy, production).key_id == next(iter(production))
        with pytest.raises(UntrustedKeyError):
            load_bundle(copy, load_trusted_keys(DEV_KEY))
        before, after = read_unverified(original.read_bytes()), read_unverified(copy.read_bytes())
        assert before[0] == after[0]
        assert before[1] == after[1]
    assert _check(public, signed) == 0
    assert _check(public, SHIPPED) == 1  # what install.sh refuses: dev-signed on a prod box


def test_step2_sign_refuses_a_bundle_it_cannot_verify(tmp_path: Path) -> None:
    private, _ = _keygen(tmp_path / "keys", "production")
    _, stranger = _keygen(tmp_path / "other", "stranger")
    args = ["sign", str(SHIPPED[0]), "--key", str(private), "--trusted-keys", str(stranger),
            "--out-dir", str(tmp_path / "out")]  # fmt: skip
    assert models_main(args) == 1
    assert not (tmp_path / "out" / SHIPPED[0].name).exists()


def test_step2_a_box_trusting_only_the_production_key_scores_as_before(tmp_path: Path) -> None:
    private, public = _keygen(tmp_path / "keys", "production")
    payments = BUNDLES / "payments-fraud.ewb"
    (signed,) = _sign([payments], private, DEV_KEY, tmp_path / "out")
    sample = next((REPO / "models" / "samples").glob("*payments*"))

    def score(bundle: Path, key: Path) -> list[float]:
        done = subprocess.run(
            [sys.executable, "-m", "agent.cli", "score", str(bundle), str(sample),
             "--trusted-keys", str(key)],
            capture_output=True, text=True, check=True, cwd=REPO,
        )  # fmt: skip
        return [json.loads(line)["score"] for line in done.stdout.splitlines()]

    production_scores = score(signed, public)
    assert production_scores
    assert production_scores == score(payments, DEV_KEY)


def test_step3_rotation_trusts_bundles_of_both_keys(tmp_path: Path) -> None:
    old_private, old_public = _keygen(tmp_path / "keys", "production-2026")
    new_private, new_public = _keygen(tmp_path / "keys", "production-2027")
    by_old = _sign(SHIPPED, old_private, DEV_KEY, tmp_path / "old")
    by_new = _sign(SHIPPED, new_private, DEV_KEY, tmp_path / "new")
    both = _trust(tmp_path / "trusted", old_public, new_public)
    assert _check(both, by_old + by_new) == 0
    assert len(load_trusted_keys(both)) == 2


def test_step4_revocation_refuses_bundles_signed_only_by_the_old_key(tmp_path: Path) -> None:
    old_private, old_public = _keygen(tmp_path / "keys", "production-2026")
    new_private, new_public = _keygen(tmp_path / "keys", "production-2027")
    by_old = _sign(SHIPPED, old_private, DEV_KEY, tmp_path / "old")
    # Centrally, the old key's bundles are re-signed with the new key before revoking it.
    by_new = _sign(by_old, new_private, old_public, tmp_path / "new")
    revoked = _trust(tmp_path / "trusted", new_public)
    assert _check(revoked, by_new) == 0
    assert _check(revoked, by_old) == 1
    with pytest.raises(UntrustedKeyError):
        load_bundle(by_old[0], load_trusted_keys(revoked))
