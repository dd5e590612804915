"""The agent's model store: the last few verified bundles, and each stream's rollout state.

Layout under ``state_dir``::

    bundles/{name}@{version}@{sha256[:12]}.ewb   the exact bytes that were verified
                                                    (@ is never part of a model name)
    streams/{stream}.json                           rollout state (versions by number, sha256)

Durability: every file is written to a temporary name, fsynced, renamed over the old one,
and the directory fsynced, so after a crash either the old or the new file is there. A
bundle is written before any state that names it.

Bounds: per model at most ``keep`` bundle files; :meth:`ModelStore.save_state` deletes the
model's files the state no longer names (the state names at most ``keep``: the active
version and ``keep - 1`` previous ones).

Trust: loading verifies a bundle again (container, signer among this run's trusted keys,
signature, digest) and checks its sha256 against the one the state recorded; a file that
fails is logged and skipped, and the caller falls back to what it has.

Without a directory the same store lives in memory: rollback still needs no network, but
nothing survives a restart.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from models.bundle import BUNDLE_SUFFIX, Bundle, BundleError, verify_bundle

log = logging.getLogger(__name__)


class ModelStore:
    def __init__(
        self, directory: Path | None, keep: int, trusted: dict[str, Ed25519PublicKey]
    ) -> None:
        self.directory = directory
        self.keep = keep
        self.trusted = trusted
        self._memory: dict[str, bytes] = {}  # file name -> bytes, when there is no directory
        self._states: dict[str, dict[str, Any]] = {}
        if directory is not None:
            (directory / "bundles").mkdir(parents=True, exist_ok=True)
            (directory / "streams").mkdir(parents=True, exist_ok=True)

    @staticmethod
    def file_name(name: str, version: int, sha256: str) -> str:
        return f"{name}@{version}@{sha256[:12]}{BUNDLE_SUFFIX}"

    # -- bundles -------------------------------------------------------------------------------
    def put(self, bundle: Bundle, data: bytes) -> None:
        m = bundle.manifest
        name = self.file_name(m.name, m.version, bundle.sha256)
        if self.directory is None:
            self._memory[name] = data
        elif not (self.directory / "bundles" / name).exists():
            write_atomically(self.directory / "bundles" / name, data)

    def get(
        self, name: str, version: int, sha256: str | None = None
    ) -> tuple[Bundle, bytes] | None:
        """The stored bundle of ``name`` v``version`` (of that sha256 if given), verified."""
        prefix = f"{name}@{version}@"
        for file_name in sorted(self._names()):
            if not file_name.startswith(prefix):
                continue
            if sha256 is not None and not file_name.startswith(prefix + sha256[:12]):
                continue
            data = self._read(file_name)
            try:
                bundle = verify_bundle(data, self.trusted)
            except BundleError as exc:
                log.error("stored bundle %s fails verification, skipped: %s", file_name, exc)
                continue
            if sha256 is not None and bundle.sha256 != sha256:
                log.error("stored bundle %s is not the one recorded (sha256), skipped", file_name)
                continue
            return bundle, data
        return None

    def _names(self) -> list[str]:
        if self.directory is None:
            return list(self._memory)
        return [p.name for p in (self.directory / "bundles").glob(f"*{BUNDLE_SUFFIX}")]

    def _read(self, file_name: str) -> bytes:
        if self.directory is None:
            return self._memory[file_name]
        return (self.directory / "bundles" / file_name).read_bytes()

    def _delete(self, file_name: str) -> None:
        if self.directory is None:
            self._memory.pop(file_name, None)
        else:
            (self.directory / "bundles" / file_name).unlink(missing_ok=True)

    # -- state ---------------------------------------------------------------------------------
    def load_state(self, stream: str) -> dict[str, Any] | None:
        if self.directory is None:
            return self._states.get(stream)
        path = self.directory / "streams" / f"{stream}.json"
        try:
            state = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.error("rollout state %s unreadable, starting afresh: %s", path, exc)
            return None
        return state if isinstance(state, dict) else None

    def save_state(self, stream: str, model: str, state: dict[str, Any]) -> None:
        """Write ``state`` (which names the versions in use) and prune the model's bundles."""
        if self.directory is None:
            self._states[stream] = state
        else:
            path = self.directory / "streams" / f"{stream}.json"
            write_atomically(path, json.dumps(state, indent=2, sort_keys=True).encode())
        named = [state.get("active"), *state.get("previous", [])]
        keep = {self.file_name(model, v["number"], v["sha256"]) for v in named if v}
        for file_name in self._names():
            if file_name.startswith(f"{model}@") and file_name not in keep:
                self._delete(file_name)


def write_atomically(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` so that a crash leaves the old or the new file."""
    temporary = path.with_name(f".{path.name}.tmp")
    with temporary.open("wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    temporary.replace(path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
