"""Signed model bundles: one file with ``manifest.json``, ``model.tflite``, ``signature.json``.

The manifest carries the model's sha256, and the Ed25519 signature covers the manifest's
exact bytes, so one signature check plus one digest check prove both files. Loading never
trusts anything before both checks pass against the caller's trusted keys.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Self

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from models.features import BaselineSpec, FeatureSpec
from plumbing.errors import EdgewatchError

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
MODEL = "model.tflite"
SIGNATURE = "signature.json"
BUNDLE_SUFFIX = ".ewb"
MAX_BUNDLE_BYTES = 64 * 1024 * 1024
MAX_MANIFEST_BYTES = 1024 * 1024


class BundleError(EdgewatchError):
    """A bundle that must not be loaded; the message says which check failed."""


class BundleFormatError(BundleError):
    """Not a bundle: wrong container, missing or extra members, unreadable manifest."""


class DigestMismatchError(BundleError):
    """model.tflite is not the model the manifest names (sha256 differs)."""


class SignatureError(BundleError):
    """The signature does not verify with the key it names."""


class UntrustedKeyError(BundleError):
    """The bundle is signed by a key that is not in the trusted set."""


ScoreKind = Literal["mse", "mae", "max_feature_mse"]


class ScoreSpec(BaseModel):
    """How a reconstruction becomes a score, and where the alert threshold lies."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: ScoreKind = Field(
        "mse",
        description="mse / mae: mean squared or absolute error over all inputs; "
        "max_feature_mse: the largest of the features' squared errors, each averaged over "
        "the window (one channel gone wrong is not diluted by the others).",
    )
    threshold: float = Field(..., ge=0, description="score >= threshold means anomaly.")
    calibration_quantile: float = Field(
        ..., gt=0, le=1, description="Quantile of held-out normal scores the threshold is."
    )
    threshold_margin: float = Field(
        1.0, gt=0, description="threshold = margin × the calibration quantile's score."
    )
    calibration_quantiles: dict[str, float] = Field(
        default_factory=dict, description="Score quantiles of held-out normal data."
    )


class TensorSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    dtype: Literal["int8", "uint8", "float32"]
    scale: float = 0.0
    zero_point: int = 0


class Cohort(BaseModel):
    """The boxes a release goes to: listed node ids, a share of the fleet, or both (union).

    The share is taken by a stable hash of the node id (:func:`node_bucket`), so widening a
    later release from 10 % to 50 % keeps the first 10 % and adds to them.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    nodes: tuple[str, ...] | None = Field(None, description="Node ids the release goes to.")
    percent: float | None = Field(
        None, ge=0, le=100, description="Share of the fleet, by stable hash of the node id."
    )

    @model_validator(mode="after")
    def _names_someone(self) -> Self:
        if self.nodes is None and self.percent is None:
            raise ValueError("a cohort needs nodes, percent, or both")
        return self

    def includes(self, node_id: str) -> bool:
        listed = self.nodes is not None and node_id in self.nodes
        return listed or (self.percent is not None and node_bucket(node_id) < self.percent)


def node_bucket(node_id: str) -> float:
    """A node's fixed place in [0, 100): the first 32 bits of sha256(node id), scaled."""
    return int(hashlib.sha256(node_id.encode()).hexdigest()[:8], 16) / 2**32 * 100


class RolloutRules(BaseModel):
    """Per-bundle overrides of the box's rollout rules (``[rollout.rules]`` in agent.toml);
    an unset field keeps the box's value."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    shadow_events: int | None = Field(None, ge=0, description="Events scored in shadow, at least.")
    shadow_s: float | None = Field(None, ge=0, description="Seconds in shadow, at least.")
    probation_events: int | None = Field(None, ge=0, description="Events on probation.")
    probation_s: float | None = Field(None, ge=0, description="Seconds on probation.")
    check_events: int | None = Field(None, ge=1, description="Events per probation check.")
    alert_rate_ratio_max: float | None = Field(None, gt=0, description="Upper band factor.")
    alert_rate_ratio_min: float | None = Field(None, ge=0, description="Lower band factor.")
    alert_rate_slack: float | None = Field(None, ge=0, le=1, description="Band widening.")
    min_rank_correlation: float | None = Field(
        None, ge=-1, le=1, description="Spearman floor between the two models' scores."
    )
    batch_latency_budget_ms: float | None = Field(None, gt=0, description="p95 batch time.")
    batch_latency_ratio_max: float | None = Field(
        None, gt=0, description="p95 batch time as a multiple of the current model's."
    )
    max_errors: int | None = Field(None, ge=0, description="Rows the model may fail on.")


class RolloutSpec(BaseModel):
    """How a release rolls out: to whom, and under which rules (all optional)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cohort: Cohort | None = Field(None, description="Boxes it goes to; unset: every box.")
    rules: RolloutRules = Field(
        default_factory=RolloutRules, description="Overrides of the box's rollout rules."
    )


class Manifest(BaseModel):
    """Everything the edge needs to know about a model, signed as one document."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format_version: Literal[1] = 1
    name: str = Field(..., pattern=r"^[A-Za-z0-9_-]{1,64}$")
    version: int = Field(..., ge=1, description="Increases with every published model.")
    stream: str = Field(..., pattern=r"^[A-Za-z0-9_-]{1,64}$")
    created_at: str
    features: FeatureSpec
    score: ScoreSpec
    quantization: Literal["int8", "float32"]
    input: TensorSpec
    output: TensorSpec
    architecture: list[int] = Field(default_factory=list)
    reads_fields: list[str] = Field(
        default_factory=list, description="Payload fields the model reads (the feature names)."
    )
    training: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, Any] = Field(default_factory=dict)
    model_sha256: str = Field(..., pattern=r"^[0-9a-f]{64}$")
    rollout: RolloutSpec | None = Field(
        None, description="Cohort and rollout rules; unset: every box, the box's rules."
    )
    baseline: BaselineSpec | None = Field(
        None, description="Per-device baselines the agent learns (scaling, threshold)."
    )

    def to_bytes(self) -> bytes:
        """The signed bytes. An unset ``rollout`` is left out, so manifests written before
        it existed (and ``make bundles``) stay byte-identical."""
        document = self.model_dump(mode="json", exclude={"rollout", "baseline"})
        if self.baseline is not None:  # left out when unset, like rollout
            document["baseline"] = self.baseline.model_dump(mode="json")
        if self.rollout is not None:
            document["rollout"] = self.rollout.model_dump(mode="json", exclude_none=True)
        return json.dumps(document, indent=2, sort_keys=True).encode()


@dataclass(frozen=True)
class Bundle:
    """A verified bundle: its manifest, model bytes, the signing key id, its own digest."""

    manifest: Manifest
    model: bytes
    key_id: str
    sha256: str

    @property
    def label(self) -> str:
        return f"{self.manifest.name} v{self.manifest.version}"


# -- keys ----------------------------------------------------------------------------------------
def key_id(public_key: Ed25519PublicKey) -> str:
    """First 16 hex digits of the sha256 of the raw public key."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def generate_keypair(private_path: Path, public_path: Path) -> str:
    """Write a new Ed25519 key pair (PEM); the private file is created mode 0600."""
    private = Ed25519PrivateKey.generate()
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    private_path.touch(mode=0o600, exist_ok=False)
    private_path.write_bytes(pem)
    public = private.public_key()
    public_path.write_bytes(
        public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return key_id(public)


def load_private_key(path: Path) -> Ed25519PrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise BundleError(f"{path} is not an Ed25519 private key")
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except ValueError as exc:
        raise BundleError(f"{path} is not a PEM public key: {exc}") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise BundleError(f"{path} is not an Ed25519 public key")
    return key


def load_trusted_keys(source: Path) -> dict[str, Ed25519PublicKey]:
    """Trusted keys by id, from one PEM file or every *.pem / *.pub file of a directory."""
    if source.is_file():
        paths = [source]
    else:
        # Private keys may sit beside public ones on a build machine; they are never trusted.
        paths = [
            p
            for p in sorted(source.glob("*"))
            if p.suffix in {".pem", ".pub"} and b"PRIVATE KEY" not in p.read_bytes()[:64]
        ]
    keys = {key_id(key): key for key in (load_public_key(p) for p in paths)}
    if not keys:
        raise BundleError(f"no trusted public keys found in {source}")
    return keys


# -- pack / unpack -------------------------------------------------------------------------------
def sign_bundle(manifest: Manifest, model: bytes, private_key: Ed25519PrivateKey) -> bytes:
    """The bundle file's bytes: manifest and model, signed. Deterministic for equal inputs."""
    if hashlib.sha256(model).hexdigest() != manifest.model_sha256:
        raise DigestMismatchError("manifest.model_sha256 does not match the model given")
    manifest_bytes = manifest.to_bytes()
    signature = {
        "algorithm": "ed25519",
        "key_id": key_id(private_key.public_key()),
        "signature": base64.b64encode(private_key.sign(manifest_bytes)).decode(),
    }
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        for name, data in (
            (MANIFEST, manifest_bytes),
            (MODEL, model),
            (SIGNATURE, json.dumps(signature, indent=2).encode()),
        ):
            info = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))
            archive.writestr(info, data)
    return buffer.getvalue()


def _members(data: bytes) -> dict[str, bytes]:
    if len(data) > MAX_BUNDLE_BYTES:
        raise BundleFormatError(f"bundle is {len(data)} bytes, over {MAX_BUNDLE_BYTES}")
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            infos = archive.infolist()
            names = sorted(i.filename for i in infos)
            if names != sorted((MANIFEST, MODEL, SIGNATURE)):
                raise BundleFormatError(f"bundle members are {names}")
            if sum(i.file_size for i in infos) > MAX_BUNDLE_BYTES:
                raise BundleFormatError("bundle members are larger than allowed")
            return {i.filename: archive.read(i) for i in infos}
    except (zipfile.BadZipFile, KeyError, ValueError) as exc:
        raise BundleFormatError(f"not a bundle file: {exc}") from exc


def read_unverified(data: bytes) -> tuple[Manifest, bytes, dict[str, Any]]:
    """Manifest, model and signature record without any trust check (for ``inspect``)."""
    members = _members(data)
    if len(members[MANIFEST]) > MAX_MANIFEST_BYTES:
        raise BundleFormatError("manifest.json is too large")
    try:
        manifest = Manifest.model_validate_json(members[MANIFEST])
        signature = json.loads(members[SIGNATURE])
    except (ValidationError, ValueError) as exc:
        raise BundleFormatError(f"manifest or signature unreadable: {exc}") from exc
    if not isinstance(signature, dict):
        raise BundleFormatError("signature.json is not an object")
    return manifest, members[MODEL], signature


def verify_bundle(data: bytes, trusted: dict[str, Ed25519PublicKey]) -> Bundle:
    """Check container, signature (by a trusted key) and model digest; return the bundle."""
    members = _members(data)
    try:
        signature = json.loads(members[SIGNATURE])
        signer = str(signature["key_id"])
        raw_signature = base64.b64decode(signature["signature"], validate=True)
    except (ValueError, KeyError, TypeError) as exc:
        raise BundleFormatError(f"signature.json unreadable: {exc}") from exc
    public_key = trusted.get(signer)
    if public_key is None:
        raise UntrustedKeyError(f"bundle signed by key {signer}, which is not trusted")
    try:
        public_key.verify(raw_signature, members[MANIFEST])
    except InvalidSignature as exc:
        raise SignatureError(f"manifest signature does not verify with key {signer}") from exc
    manifest, model, _ = read_unverified(data)
    actual = hashlib.sha256(model).hexdigest()
    if actual != manifest.model_sha256:
        raise DigestMismatchError(
            f"model.tflite sha256 {actual[:12]}… differs from the manifest's "
            f"{manifest.model_sha256[:12]}…"
        )
    return Bundle(manifest, model, signer, hashlib.sha256(data).hexdigest())


def load_bundle(path: Path, trusted: dict[str, Ed25519PublicKey]) -> Bundle:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise BundleError(f"cannot read bundle {path}: {exc}") from exc
    try:
        return verify_bundle(data, trusted)
    except BundleError as exc:
        raise type(exc)(f"{path}: {exc}") from exc
