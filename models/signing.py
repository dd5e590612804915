"""Production signing: re-sign bundles centrally with your own key, and check a box's bundles.

The flow (README "Production keys"): ``edgewatch-models keygen --name production`` once,
centrally; ``edgewatch-models sign`` re-signs bundles (the shipped ones are signed with the
development key) after verifying them with the keys they are trusted under now; boxes trust
the public key only (``install.sh --trusted-key``). A rotation installs two trusted keys,
re-signs with the new one, and revokes the old one by installing the new key alone: bundles
signed only by the old key are refused from then on (``UntrustedKeyError``).

A re-signed bundle carries the same manifest and model as the original; only the signer
changes. Nothing here reads or writes a private key except ``sign``'s ``--key``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from models.bundle import (
    BundleError,
    key_id,
    load_bundle,
    load_private_key,
    load_trusted_keys,
    sign_bundle,
    verify_bundle,
)


def resign(
    data: bytes, trusted: dict[str, Ed25519PublicKey], private_key: Ed25519PrivateKey
) -> bytes:
    """``data`` signed by ``private_key`` instead, once it verifies with ``trusted``."""
    bundle = verify_bundle(data, trusted)
    return sign_bundle(bundle.manifest, bundle.model, private_key)


def check(paths: Iterable[Path], trusted: dict[str, Ed25519PublicKey]) -> list[str]:
    """One line per bundle that does not load with ``trusted`` (empty: all load)."""
    problems = []
    for path in paths:
        try:
            load_bundle(path, trusted)
        except BundleError as exc:
            problems.append(str(exc))
    return problems


def cmd_sign(args: argparse.Namespace) -> int:
    trusted = load_trusted_keys(args.trusted_keys)
    key = load_private_key(args.key)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for path in args.bundles:
        target = args.out_dir / path.name
        target.write_bytes(resign(path.read_bytes(), trusted, key))
        print(f"{target}: signed by {load_bundle(target, {**trusted, **_own(key)}).key_id}")
    return 0


def _own(key: Ed25519PrivateKey) -> dict[str, Ed25519PublicKey]:
    public = key.public_key()
    return {key_id(public): public}


def cmd_check(args: argparse.Namespace) -> int:
    problems = check(args.bundles, load_trusted_keys(args.trusted_keys))
    for line in problems:
        print(f"untrusted: {line}", file=sys.stderr)
    if problems:
        print(
            "sign the bundles with a trusted key centrally (edgewatch-models sign) and install "
            "them with --bundles DIR, or trust their key (--trusted-key)",
            file=sys.stderr,
        )
    return 1 if problems else 0


def add_commands(subparsers: Any) -> None:
    """``sign`` and ``check-bundles`` for ``edgewatch-models`` (and ``python -m``)."""
    sign = subparsers.add_parser("sign", help="re-sign bundles with a (production) key")
    sign.add_argument("bundles", type=Path, nargs="+")
    sign.add_argument("--key", type=Path, required=True, help="private key (PEM) to sign with")
    sign.add_argument(
        "--trusted-keys", type=Path, required=True, help="keys the bundles verify with now"
    )
    sign.add_argument("--out-dir", type=Path, required=True)
    sign.set_defaults(run=cmd_sign)

    verify = subparsers.add_parser("check", help="exit 1 unless every bundle is trusted")
    verify.add_argument("bundles", type=Path, nargs="+")
    verify.add_argument("--trusted-keys", type=Path, required=True)
    verify.set_defaults(run=cmd_check)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models.signing", description=__doc__)
    add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        return int(args.run(args))
    except (BundleError, OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
