"""The CSR policy: one pure function takes the request body and the device id the caller is
entitled to, and returns a decision. No I/O; the EST endpoints act on the decision.

Rules, in order: body size, base64 (RFC 7030 sends base64 DER), PKCS#10 structure, the
signature (proof the caller holds the key), the key type (EC P-256, or Ed25519 when the
broker takes it), the subject (CN = the device id, optionally O, nothing else) and no
extra names (no subjectAltName, not a CA).
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtensionOID, NameOID

# Refusal reasons (metric labels, and the first word of the 4xx body).
TOO_LARGE = "too_large"
BAD_BASE64 = "bad_base64"
BAD_CSR = "bad_csr"
BAD_SIGNATURE = "bad_signature"
BAD_KEY = "bad_key"
WRONG_SUBJECT = "wrong_subject"
EXTRA_NAMES = "extra_names"
REASONS = (TOO_LARGE, BAD_BASE64, BAD_CSR, BAD_SIGNATURE, BAD_KEY, WRONG_SUBJECT, EXTRA_NAMES)

DEFAULT_MAX_BODY = 16 * 1024
_B64 = re.compile(rb"^[A-Za-z0-9+/=\s]*$")
_ALLOWED_SUBJECT = {NameOID.COMMON_NAME, NameOID.ORGANIZATION_NAME}


@dataclass(frozen=True)
class Decision:
    accepted: bool
    reason: str  # "ok" or one of REASONS
    detail: str
    csr: x509.CertificateSigningRequest | None = None

    @staticmethod
    def refuse(reason: str, detail: str) -> Decision:
        return Decision(False, reason, detail)


def decode_body(body: bytes) -> bytes:
    """Base64 (whitespace allowed, as RFC 7030 bodies wrap lines) to DER; ValueError if not."""
    if not _B64.match(body):
        raise ValueError("body is not base64")
    compact = b"".join(body.split())
    try:
        return base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"body is not base64: {exc}") from exc


def check_csr(
    body: bytes, device_id: str, *, max_body: int = DEFAULT_MAX_BODY, allow_ed25519: bool = False
) -> Decision:
    """Decide on an enrollment request for ``device_id``; never raises for bad input."""
    if len(body) > max_body:
        return Decision.refuse(TOO_LARGE, f"body is {len(body)} bytes, limit {max_body}")
    try:
        der = decode_body(body)
    except ValueError as exc:
        return Decision.refuse(BAD_BASE64, str(exc))
    if not der:
        return Decision.refuse(BAD_CSR, "empty request")
    try:
        csr = x509.load_der_x509_csr(der)
    except ValueError as exc:
        return Decision.refuse(BAD_CSR, f"not a PKCS#10 request: {exc}")
    try:
        signature_ok = csr.is_signature_valid
    except (ValueError, TypeError) as exc:  # unsupported algorithm
        return Decision.refuse(BAD_SIGNATURE, f"signature cannot be checked: {exc}")
    if not signature_ok:
        return Decision.refuse(BAD_SIGNATURE, "the request's signature does not verify")
    key_problem = _key_problem(csr, allow_ed25519)
    if key_problem:
        return Decision.refuse(BAD_KEY, key_problem)
    subject_problem = _subject_problem(csr, device_id)
    if subject_problem:
        return Decision.refuse(WRONG_SUBJECT, subject_problem)
    names_problem = _extension_problem(csr)
    if names_problem:
        return Decision.refuse(EXTRA_NAMES, names_problem)
    return Decision(True, "ok", "accepted", csr)


def _key_problem(csr: x509.CertificateSigningRequest, allow_ed25519: bool) -> str:
    try:
        key = csr.public_key()
    except ValueError as exc:
        return f"public key not readable: {exc}"
    if isinstance(key, ec.EllipticCurvePublicKey):
        if key.curve.name != "secp256r1":
            return f"EC curve {key.curve.name} refused; use P-256"
        return ""
    if isinstance(key, ed25519.Ed25519PublicKey):
        return "" if allow_ed25519 else "Ed25519 keys are not accepted by this broker; use P-256"
    return f"{type(key).__name__.lstrip('_')} keys refused; use EC P-256"


def _subject_problem(csr: x509.CertificateSigningRequest, device_id: str) -> str:
    attrs = list(csr.subject)
    for attr in attrs:
        if attr.oid not in _ALLOWED_SUBJECT:
            return f"subject attribute {attr.oid.dotted_string} not allowed (only CN and O)"
    cns = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(cns) != 1:
        return f"subject must hold exactly one CN, has {len(cns)}"
    cn = cns[0].value
    if cn != device_id:
        return f"CN {cn!r} is not the device id {device_id!r} this request is entitled to"
    return ""


def _extension_problem(csr: x509.CertificateSigningRequest) -> str:
    for ext in csr.extensions:
        if ext.oid == ExtensionOID.SUBJECT_ALTERNATIVE_NAME:
            return "subjectAltName not allowed: the CN is the only name"
        if ext.oid == ExtensionOID.BASIC_CONSTRAINTS and getattr(ext.value, "ca", False):
            return "a CA certificate cannot be requested"
    return ""
