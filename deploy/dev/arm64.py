"""An emulated aarch64 Debian 12 (Raspberry Pi OS's base) for checking the edge install.

The root is debootstrapped once (``--arch=arm64``, about 2.5 minutes here) into
``$EDGEWATCH_CACHE/debian-bookworm-arm64`` and runs through qemu-user-static's binfmt
handler. ``install_edge`` copies the repository in and installs the ``edge`` extra into a
venv there with wheels only for every dependency (``--only-binary=:all:``: a Pi needs no
compiler); the tests then run ``edgewatch-agent score`` inside. The install runs with
``systemd-nspawn`` (no boot: /proc, /dev and the host's network); scoring runs in a plain
chroot without /proc (see ``run_without_proc``).

    python deploy/dev/arm64.py base     # build (or reuse) the root, print its path
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from nspawn import CACHE, CONTAINER_CA, HOST_CA, MIRROR

ROOT = CACHE / "debian-bookworm-arm64"
VENV = "/opt/edgewatch-venv"
SRC = "/root/edgewatch"
BINFMT = Path("/proc/sys/fs/binfmt_misc")


def ensure_emulation() -> None:
    """qemu-user-static with its binfmt handler for aarch64 binaries (Debian host, root)."""
    if not Path("/usr/bin/qemu-aarch64-static").exists():
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        packages = ["qemu-user-static", "binfmt-support", "systemd-container", "debootstrap"]
        subprocess.run(["apt-get", "install", "-y", "-qq", *packages], check=True, env=env)
    if not (BINFMT / "register").exists():
        subprocess.run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(BINFMT)], check=True)
    if not (BINFMT / "qemu-aarch64").exists():
        subprocess.run(["update-binfmts", "--enable", "qemu-aarch64"], check=True)


def ensure_root(root: Path = ROOT) -> Path:
    ensure_emulation()
    if (root / "usr" / "bin" / "python3").exists():
        return root
    partial = root.with_name(root.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    command = ["nice", "-n", "10", "debootstrap", "--arch=arm64", "--variant=minbase",
               "--include=python3,python3-venv,ca-certificates", "bookworm", str(partial),
               MIRROR]  # fmt: skip
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    partial.rename(root)
    return root


def run(root: Path, command: list[str], env: dict[str, str] | None = None,
        timeout_s: float = 1800) -> subprocess.CompletedProcess[str]:  # fmt: skip
    """``command`` inside the root (emulated), as root, with a clean environment."""
    settings = [f"--setenv={k}={v}" for k, v in (env or {}).items()]
    full = ["systemd-nspawn", "-q", "-D", str(root), "--register=no", "--keep-unit", "--pipe",
            *settings, *command]  # fmt: skip
    return subprocess.run(full, capture_output=True, text=True, timeout=timeout_s, check=False)


def run_without_proc(root: Path, command: list[str]) -> subprocess.CompletedProcess[str]:
    """``command`` in a plain chroot with no /proc, for running TFLite under emulation.

    Under systemd-nspawn the emulated process sees the host's x86 /proc/cpuinfo; the cpuinfo
    library inside TFLite's XNNPACK then crashes (qemu: SIGSEGV) or hangs. Without /proc it
    finds no CPU information and uses its defaults, as on a box it would find an ARM CPU.
    """
    env = ["env", "-i", "PATH=/usr/bin:/bin", "LANG=C.UTF-8", "HOME=/root"]
    full = ["chroot", str(root), *env, *command]
    return subprocess.run(full, capture_output=True, text=True, timeout=1800, check=False)


def install_edge(root: Path, repo: Path) -> float:
    """Copy ``repo`` in and install its edge extra from wheels; return the seconds taken.

    A venv installed from the same package files (by content digest; tests/ and deploy/
    are not installed) is kept: returns 0.
    """
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=repo,
                           capture_output=True, check=True).stdout  # fmt: skip
    digest = hashlib.sha256()
    for name in sorted(files.split(b"\0")):
        if name.startswith((b"tests/", b"deploy/")) or not (repo / name.decode()).is_file():
            continue
        digest.update(name + b"\0" + (repo / name.decode()).read_bytes())
    marker = root / VENV.lstrip("/") / "edgewatch-source.sha256"
    if marker.exists() and marker.read_text() == digest.hexdigest():
        return 0.0
    target = root / SRC.lstrip("/")
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    archive = subprocess.run(["tar", "--null", "-T", "-", "-cf", "-"], cwd=repo, input=files,
                             capture_output=True, check=True).stdout  # fmt: skip
    subprocess.run(["tar", "-xf", "-", "-C", str(target)], input=archive, check=True)
    if HOST_CA.exists():
        shutil.copy(HOST_CA, root / CONTAINER_CA.lstrip("/"))
    env = {"PIP_CERT": CONTAINER_CA, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    env.update({k: v for k, v in os.environ.items()
                if k.startswith("PIP_") and k not in ("PIP_CERT", "PIP_FIND_LINKS")})  # fmt: skip
    started = time.monotonic()
    for command in (
        ["python3", "-m", "venv", "--clear", VENV],
        [f"{VENV}/bin/pip", "install", "-q", "--only-binary=:all:", f"{SRC}[edge]"],
    ):
        done = run(root, command, env)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(command)}: {done.stdout}\n{done.stderr}")
    marker.write_text(digest.hexdigest())
    return time.monotonic() - started


def main() -> int:
    started = time.monotonic()
    print(f"{ensure_root()} ({time.monotonic() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
