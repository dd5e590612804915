"""Signed instructions from the centre to the fleet: "serve version V of model M".

An instruction travels like a bundle: on the compacted ``edge.models`` topic, under its own
key ``{model}--serve`` (:func:`instruction_key`), which the bridge republishes retained on
``{prefix}/models/{model}--serve``; the agent verifies it itself. The wire form is a JSON
envelope whose ``payload`` is the instruction's exact JSON text and whose ``signature`` is
Ed25519 over those bytes, by a key the box trusts for bundles (the same key handling as
:mod:`models.bundle`). Anything else is refused with a reason: ``malformed``,
``unsigned``, ``untrusted_key``, ``bad_signature``.

``issued_at`` orders instructions for one model: a box applies an instruction only if it
is newer than the last one it applied, so a captured instruction cannot be replayed later
to undo a newer decision (the retained copy, seen again on every reconnect, is skipped).
"""

from __future__ import annotations

import base64
import json
import time
from typing import Literal

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from models.bundle import key_id
from plumbing.errors import EdgewatchError

ENVELOPE_FORMAT = "edgewatch-instruction/1"
KEY_SUFFIX = "--serve"
MAX_INSTRUCTION_BYTES = 64 * 1024

RefusalReason = Literal["malformed", "unsigned", "untrusted_key", "bad_signature"]


class InstructionError(EdgewatchError):
    """An instruction that must not be followed; ``reason`` is the counted refusal."""

    def __init__(self, reason: RefusalReason, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason: RefusalReason = reason


class ServeInstruction(BaseModel):
    """Serve ``version`` of ``model`` on the named nodes (every node when unset)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["serve"] = "serve"
    model: str = Field(..., pattern=r"^[A-Za-z0-9_-]{1,64}$", description="Model name.")
    version: int = Field(..., ge=1, description="Version to serve; older versions allowed.")
    issued_at: float = Field(..., gt=0, description="Unix time; orders instructions.")
    nodes: tuple[str, ...] | None = Field(None, description="Boxes it is for; unset: all.")
    reason: str = Field("", max_length=500, description="Why, for the fleet view.")

    def applies_to(self, node_id: str) -> bool:
        return self.nodes is None or node_id in self.nodes


def instruction_key(model: str) -> str:
    """The Kafka key (and MQTT models sub-topic) of a model's instructions."""
    return f"{model}{KEY_SUFFIX}"


def new_instruction(
    model: str, version: int, *, reason: str = "", nodes: tuple[str, ...] | None = None
) -> ServeInstruction:
    return ServeInstruction(
        model=model, version=version, issued_at=time.time(), nodes=nodes, reason=reason
    )


def sign_instruction(instruction: ServeInstruction, private_key: Ed25519PrivateKey) -> bytes:
    payload = json.dumps(instruction.model_dump(mode="json"), sort_keys=True)
    envelope = {
        "format": ENVELOPE_FORMAT,
        "payload": payload,
        "key_id": key_id(private_key.public_key()),
        "signature": base64.b64encode(private_key.sign(payload.encode())).decode(),
    }
    return json.dumps(envelope, indent=2).encode()


def verify_instruction(data: bytes, trusted: dict[str, Ed25519PublicKey]) -> ServeInstruction:
    """The instruction, once its signature verifies with a trusted key; else InstructionError."""
    if len(data) > MAX_INSTRUCTION_BYTES:
        raise InstructionError("malformed", f"{len(data)} bytes, over {MAX_INSTRUCTION_BYTES}")
    try:
        envelope = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise InstructionError("malformed", f"not JSON: {exc}") from exc
    if not isinstance(envelope, dict) or envelope.get("format") != ENVELOPE_FORMAT:
        raise InstructionError("malformed", f"not an {ENVELOPE_FORMAT} envelope")
    payload, signer, signature = (envelope.get(k) for k in ("payload", "key_id", "signature"))
    if not isinstance(payload, str):
        raise InstructionError("malformed", "no payload")
    if not isinstance(signer, str) or not isinstance(signature, str) or not signature:
        raise InstructionError("unsigned", "no key id or signature")
    public_key = trusted.get(signer)
    if public_key is None:
        raise InstructionError("untrusted_key", f"signed by key {signer}, which is not trusted")
    try:
        public_key.verify(base64.b64decode(signature, validate=True), payload.encode())
    except (InvalidSignature, ValueError) as exc:
        raise InstructionError("bad_signature", f"does not verify with key {signer}") from exc
    try:
        return ServeInstruction.model_validate_json(payload)
    except ValidationError as exc:
        raise InstructionError("malformed", f"signed payload unreadable: {exc}") from exc
