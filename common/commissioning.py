"""Signed commissioning records: the canonical bytes, the signature, its check.

The device's key signs the record (the Linux box signs on the box; a node's record is
signed by the technician's tool, which holds the node's key only while it provisions it).
The server checks the signature with the public key of the certificate sent along, after
checking that certificate itself. Canonical form: JSON with sorted keys, no spaces, UTF-8.
"""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

RECORD_VERSION = 1


class RecordError(Exception):
    """A record is malformed, or its signature does not verify."""


def canonical(record: dict[str, Any]) -> bytes:
    try:
        return json.dumps(
            record, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        ).encode()
    except (TypeError, ValueError) as exc:
        raise RecordError(f"record cannot be serialised: {exc}") from exc


def frame_digest(frame: bytes) -> str:
    return hashlib.sha256(frame).hexdigest()


def sign(
    record: dict[str, Any], key: ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
) -> str:
    data = canonical(record)
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return base64.b64encode(key.sign(data)).decode()
    return base64.b64encode(key.sign(data, ec.ECDSA(hashes.SHA256()))).decode()


def verify(
    record: dict[str, Any],
    signature_b64: str,
    public_key: object,
) -> None:
    """Raise RecordError unless ``signature_b64`` is the key's signature of ``record``."""
    try:
        signature = base64.b64decode(signature_b64, validate=True)
    except ValueError as exc:
        raise RecordError("signature is not base64") from exc
    data = canonical(record)
    try:
        if isinstance(public_key, ed25519.Ed25519PublicKey):
            public_key.verify(signature, data)
        elif isinstance(public_key, ec.EllipticCurvePublicKey):
            public_key.verify(signature, data, ec.ECDSA(hashes.SHA256()))
        else:
            raise RecordError("unsupported key type")
    except InvalidSignature as exc:
        raise RecordError("signature does not match the record and the device's key") from exc
