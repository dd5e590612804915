"""On an emulated aarch64 Debian 12: the edge extra installs from wheels only, and both
shipped bundles score a sample exactly as on x86_64 (``make test-arm64``, root).

What this proves about a Raspberry Pi: the dependency wheels exist for aarch64 and need no
compiler, and the int8 models give bit-identical scores there. What it does not: speed
(qemu emulates the CPU), or systemd and the units on aarch64 (see the README).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "deploy" / "dev"))
import arm64  # noqa: E402

pytestmark = [
    pytest.mark.arm64,
    pytest.mark.slow,
    pytest.mark.skipif(
        os.environ.get("EDGEWATCH_TEST_ARM64") != "1",
        reason="minutes under emulation: run with make test-arm64 (EDGEWATCH_TEST_ARM64=1)",
    ),
]

BUNDLES = REPO / "models" / "bundles"
DEV_KEY = BUNDLES / "dev-signing-key.DEVELOPMENT-ONLY.pub.pem"
ROWS = 500


def _head(source: Path, target: Path, rows: int) -> None:
    lines = source.read_text().splitlines(keepends=True)
    target.write_text("".join(lines[: rows + 1]))


@pytest.fixture(scope="module")
def root() -> Path:
    if os.geteuid() != 0:
        pytest.skip("emulation and systemd-nspawn need root")
    path = arm64.ensure_root()
    seconds = arm64.install_edge(path, REPO)
    print(f"\narm64 edge install: {seconds:.0f} s", file=sys.stderr)
    machine = arm64.run(path, ["uname", "-m"]).stdout.strip()
    assert machine == "aarch64"
    return path


def _scores_here(bundle: Path, sample: Path) -> list[tuple[str, float]]:
    done = subprocess.run(
        [sys.executable, "-m", "agent.cli", "score", str(bundle), str(sample),
         "--trusted-keys", str(DEV_KEY)],
        capture_output=True, text=True, check=True, cwd=REPO,
    )  # fmt: skip
    return _parse(done.stdout)


def _scores_on_arm64(root: Path, bundle: Path, sample: Path) -> list[tuple[str, float]]:
    inside = f"/root/{sample.name}"
    (root / inside.lstrip("/")).write_bytes(sample.read_bytes())
    bundles = f"{arm64.SRC}/models/bundles"
    command = [f"{arm64.VENV}/bin/edgewatch-agent", "score", f"{bundles}/{bundle.name}", inside,
               "--trusted-keys", f"{bundles}/{DEV_KEY.name}"]  # fmt: skip
    done = arm64.run_without_proc(root, command)
    assert done.returncode == 0, done.stderr
    return _parse(done.stdout)


def _parse(jsonl: str) -> list[tuple[str, float]]:
    documents = [json.loads(line) for line in jsonl.splitlines() if line.strip()]
    return [(d["event_id"], d["score"]) for d in documents]


def test_the_edge_extra_installed_from_wheels_only(root: Path) -> None:
    imports = "import ai_edge_litert, confluent_kafka, numpy; print('ok')"
    done = arm64.run(root, [f"{arm64.VENV}/bin/python", "-c", imports])
    assert done.stdout.strip() == "ok", done.stderr


@pytest.mark.parametrize(
    ("bundle", "sample"),
    [
        ("payments-fraud.ewb", REPO / "models" / "samples" / "payments-holdout.csv"),
        ("sensors-skab.ewb", REPO.parent / "shared" / "datasets" / "skab" / "valve1" / "0.csv"),
    ],
)
def test_shipped_bundle_scores_exactly_as_on_x86_64(
    root: Path, bundle: str, sample: Path, tmp_path: Path
) -> None:
    if not sample.exists():
        pytest.skip(f"sample {sample} not found")
    local = tmp_path / f"{Path(bundle).stem}-{sample.name}"  # the name makes the event ids
    _head(sample, local, ROWS)
    expected = _scores_here(BUNDLES / bundle, local)
    got = _scores_on_arm64(root, BUNDLES / bundle, local)
    assert len(expected) == ROWS
    assert got == expected
