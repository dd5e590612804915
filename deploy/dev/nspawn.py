"""A booted Debian 12 with systemd as PID 1, in a systemd-nspawn container, for deploy tests.

The base root is built once with debootstrap and cached outside the repository
(``$EDGEWATCH_CACHE``, default ``~/.cache/edgewatch``, as ``debian-bookworm/``); a fresh
machine builds it on first use (about a minute here). Every container boots a throwaway
copy of it (reflinked where the file system allows), so tests never change the cache.

The container shares the host's network (services inside reach the dev stack's Kafka on
loopback, and the host reaches the box's Mosquitto on 127.0.0.1:1883). Commands run inside
through ``nsenter`` into the container's namespaces with a clean environment. ``stop()``
powers it off (SIGTERM to systemd-nspawn), kills it if it does not stop, and removes the
copy. Needs root, ``systemd-nspawn`` (systemd-container) and ``debootstrap``.

    python deploy/dev/nspawn.py base      # build the cached root if missing, print its path
    python deploy/dev/nspawn.py shell     # boot a copy and open a shell in it
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CACHE = Path(os.environ.get("EDGEWATCH_CACHE") or Path.home() / ".cache" / "edgewatch")
BASE = CACHE / "debian-bookworm"
MIRROR = "http://deb.debian.org/debian"
# Preinstalled so that each test run does not download them again; install.sh still
# checks for them (and would install them on a real box).
PACKAGES = ["systemd", "systemd-sysv", "dbus", "python3", "python3-venv", "mosquitto",
            "ca-certificates", "procps"]  # fmt: skip
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")
CONTAINER_CA = "/root/host-ca.crt"
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class ContainerError(RuntimeError):
    """The container could not be built, booted or reached."""


def ensure_tools() -> None:
    """Install systemd-container and debootstrap if missing (Debian host, root)."""
    if shutil.which("systemd-nspawn") and shutil.which("debootstrap"):
        return
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    packages = ["systemd-container", "debootstrap"]
    subprocess.run(["apt-get", "install", "-y", "-qq", *packages], check=True, env=env)


def ensure_base(base: Path = BASE) -> Path:
    """The cached Debian 12 root; debootstrap it (under nice) if it is not there yet."""
    if (base / "etc" / "debian_version").exists() and (base / "lib/systemd/systemd").exists():
        return base
    ensure_tools()
    partial = base.with_name(base.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    base.parent.mkdir(parents=True, exist_ok=True)
    command = ["nice", "-n", "10", "debootstrap", "--variant=minbase",
               f"--include={','.join(PACKAGES)}", "bookworm", str(partial), MIRROR]  # fmt: skip
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    partial.rename(base)
    return base


class Container:
    """One booted copy of the base root. Use as a context manager, or start()/stop()."""

    def __init__(self, name: str = "edgewatch-test", binds: dict[Path, str] | None = None) -> None:
        self.name = name
        self.binds = binds or {}
        self.workdir = Path(tempfile.mkdtemp(prefix="edgewatch-nspawn-"))
        self.root = self.workdir / "root"
        self.console = self.workdir / "console.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.init_pid: int | None = None

    def __enter__(self) -> Container:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, timeout_s: float = 60.0) -> Container:
        base = ensure_base()
        subprocess.run(["cp", "-a", "--reflink=auto", str(base), str(self.root)], check=True)
        if HOST_CA.exists():
            shutil.copy(HOST_CA, self.root / CONTAINER_CA.lstrip("/"))
        command = ["systemd-nspawn", "-D", str(self.root), "--register=no", "--keep-unit", "-b",
                   f"--machine={self.name}"]  # fmt: skip
        command += [f"--bind={host}:{inside}" for host, inside in self.binds.items()]
        with self.console.open("wb") as console:
            self.proc = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=console, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ContainerError(f"systemd-nspawn exited: {self.console.read_text()[-2000:]}")
            self.init_pid = self.init_pid or _child_of(self.proc.pid)
            if self.init_pid is not None:
                state = self.run(["systemctl", "is-system-running"], check=False).stdout.strip()
                if state in ("running", "degraded"):
                    return self
            time.sleep(0.5)
        self.stop()
        raise ContainerError(f"container did not finish booting within {timeout_s}s")

    def run(
        self,
        command: list[str],
        *,
        check: bool = True,
        env: dict[str, str] | None = None,
        timeout_s: float = 600.0,
        input_text: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``command`` inside the container (as root, clean environment)."""
        if self.init_pid is None:
            raise ContainerError("container is not running")
        environment = {"PATH": PATH, "HOME": "/root", "LANG": "C.UTF-8", **(env or {})}
        full = ["nsenter", "-t", str(self.init_pid), "-m", "-u", "-i", "-n", "-p", "--",
                "env", "-i", *(f"{k}={v}" for k, v in environment.items()), *command]  # fmt: skip
        done = subprocess.run(full, capture_output=True, text=True, timeout=timeout_s,
                              input=input_text, check=False)  # fmt: skip
        if check and done.returncode != 0:
            raise ContainerError(
                f"{' '.join(command)} exited {done.returncode}\n{done.stdout}\n{done.stderr}"
            )
        return done

    def sh(self, script: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
        return self.run(["bash", "-c", script], **kwargs)  # type: ignore[arg-type]

    def path(self, inside: str) -> Path:
        """The host path of a file inside the container."""
        return self.root / inside.lstrip("/")

    def stop(self, timeout_s: float = 30.0) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # nspawn asks the container's systemd to halt
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
                # A killed nspawn leaves its container running: end the container's init,
                # which takes every process of its PID namespace with it.
                if self.init_pid is not None:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(self.init_pid, signal.SIGKILL)
        self.init_pid = None
        shutil.rmtree(self.workdir, ignore_errors=True)


def _child_of(pid: int) -> int | None:
    """The container's init: the one child of the systemd-nspawn process."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            return int(entry.name)
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["base", "shell"])
    args = parser.parse_args(argv)
    if args.command == "base":
        started = time.monotonic()
        print(f"{ensure_base()} ({time.monotonic() - started:.0f} s)")
        return 0
    with Container("edgewatch-shell") as container:
        assert container.init_pid is not None
        return subprocess.call(["nsenter", "-t", str(container.init_pid), "-m", "-u", "-i",
                                "-n", "-p", "--", "/bin/bash", "-l"])  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
