"""Enrollment decisions and their records, apart from HTTP: one-time tokens, first enrollment
(token + CSR), re-enrollment (current certificate + CSR).

A refusal raises ``EnrollError(status, reason, detail)`` and stores nothing but its audit
entry: the token stays unused, no certificate is recorded. A token is spent in the same
transaction that records the certificate, by a conditional update, so two requests racing
with one token get one certificate.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from cryptography import x509
from cryptography.x509.oid import NameOID
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from firmware import contract
from fleet_server import audit, csr_policy, tokens
from fleet_server.audit import Actor
from fleet_server.ca import CertificateAuthority
from fleet_server.ca_ops import sign_csr
from fleet_server.identity_config import IdentitySettings
from fleet_server.identity_db import EnrollmentToken, IssuedCertificate, RevokedDevice

log = logging.getLogger(__name__)

KINDS = ("agent", "node")


class EnrollError(Exception):
    """A refused enrollment: HTTP status, a reason (metric label) and a detail for people."""

    def __init__(self, status: int, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.status = status
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Issued:
    device_id: str
    cert: x509.Certificate


def _csr_status(reason: str) -> int:
    return 413 if reason == csr_policy.TOO_LARGE else 400


def _record_cert(db: Session, cert: x509.Certificate, device_id: str, via: str) -> None:
    db.add(
        IssuedCertificate(
            serial=format(cert.serial_number, "x"),
            device_id=device_id,
            not_before=cert.not_valid_before_utc.timestamp(),
            not_after=cert.not_valid_after_utc.timestamp(),
            issued_at=time.time(),
            via=via,
        )
    )


class Enrollment:
    def __init__(
        self,
        sessions: sessionmaker[Session],
        ca: CertificateAuthority,
        settings: IdentitySettings,
    ) -> None:
        self.sessions = sessions
        self.ca = ca
        self.settings = settings

    # ---------------------------------------------------------------- tokens
    def create_token(
        self, device_id: str, kind: str, by: Actor, site_id: str | None, ttl_s: int | None
    ) -> tuple[str, float]:
        """A one-time enrollment token for ``device_id``; (token, expires_at)."""
        if not contract.valid_device_id(device_id):
            raise EnrollError(400, "bad_device_id", f"invalid device id {device_id!r}")
        if kind not in KINDS:
            raise EnrollError(400, "bad_kind", f"kind must be one of {KINDS}")
        ttl = self.settings.token_ttl_s if ttl_s is None else ttl_s
        token = tokens.new_token(tokens.ENROLL_PREFIX)
        now = time.time()
        with self.sessions.begin() as db:
            if db.get(RevokedDevice, device_id) is not None:
                audit.record(db, by, "token.create", device_id, "refused:device_revoked")
                raise EnrollError(409, "device_revoked", f"{device_id} is revoked")
            db.add(
                EnrollmentToken(
                    token_hash=tokens.token_hash(token),
                    device_id=device_id,
                    kind=kind,
                    site_id=site_id,
                    created_by=by.name,
                    created_at=now,
                    expires_at=now + ttl,
                )
            )
            audit.record(db, by, "token.create", device_id, detail={"ttl_s": ttl, "kind": kind})
        return token, now + ttl

    def record_refusal(self, action: str, source: str, reason: str) -> None:
        """Audit a request refused before it reached a decision (size, content type)."""
        actor = Actor("unknown", "device", source)
        audit.record_now(self.sessions, actor, action, "", f"refused:{reason}")

    # ---------------------------------------------------------------- enroll
    def enroll(self, token: str, body: bytes, source: str, claimed_id: str | None) -> Issued:
        """First enrollment, authorised by a one-time token bound to one device id."""
        actor = Actor("token:?", "device", source)
        try:
            row = self._usable_token(token, source, claimed_id)
            actor = Actor(f"token:{row.device_id}", "device", source)
            decision = csr_policy.check_csr(
                body,
                row.device_id,
                max_body=self.settings.max_csr_bytes,
                allow_ed25519=self.settings.allow_ed25519,
            )
            if not decision.accepted or decision.csr is None:
                raise EnrollError(_csr_status(decision.reason), decision.reason, decision.detail)
            cert = sign_csr(self.ca, decision.csr, row.device_id, self.settings.cert_days)
            with self.sessions.begin() as db:
                spent = db.execute(
                    update(EnrollmentToken)
                    .where(
                        EnrollmentToken.token_hash == row.token_hash,
                        EnrollmentToken.used_at.is_(None),
                    )
                    .values(used_at=time.time(), used_from=source[:64])
                )
                if getattr(spent, "rowcount", 0) != 1:
                    raise EnrollError(401, "token_used", "this enrollment token was used already")
                _record_cert(db, cert, row.device_id, "enroll")
                audit.record(db, actor, "est.enroll", row.device_id, detail={"serial": _hex(cert)})
        except EnrollError as exc:
            audit.record_now(
                self.sessions, actor, "est.enroll", claimed_id or "", f"refused:{exc.reason}"
            )
            raise
        log.info("enrolled %s from %s, serial %s", row.device_id, source, _hex(cert))
        return Issued(row.device_id, cert)

    def _usable_token(self, token: str, source: str, claimed_id: str | None) -> EnrollmentToken:
        if not tokens.well_formed(token, tokens.ENROLL_PREFIX):
            raise EnrollError(401, "bad_token", "an enrollment token is required")
        with self.sessions() as db:
            row = db.get(EnrollmentToken, tokens.token_hash(token))
            if row is None:
                raise EnrollError(401, "bad_token", "unknown enrollment token")
            if claimed_id is not None and claimed_id != row.device_id:
                raise EnrollError(401, "bad_token", "token is not for this device id")
            if row.used_at is not None:
                raise EnrollError(401, "token_used", "this enrollment token was used already")
            if row.expires_at < time.time():
                raise EnrollError(401, "token_expired", "this enrollment token has expired")
            if db.get(RevokedDevice, row.device_id) is not None:
                raise EnrollError(403, "device_revoked", f"{row.device_id} is revoked")
            return row

    # ---------------------------------------------------------------- re-enroll
    def reenroll(self, client_cert_der: bytes | None, body: bytes, source: str) -> Issued:
        """Renewal, authorised by the device's current certificate (mutual TLS)."""
        actor = Actor("cert:?", "device", source)
        device_id = ""
        try:
            if not client_cert_der:
                raise EnrollError(401, "no_client_cert", "renewal needs the current certificate")
            current = x509.load_der_x509_certificate(client_cert_der)
            cns = current.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
            device_id = str(cns[0].value) if cns else ""
            actor = Actor(f"cert:{device_id}", "device", source)
            self._current_ok(current, device_id)
            decision = csr_policy.check_csr(
                body,
                device_id,
                max_body=self.settings.max_csr_bytes,
                allow_ed25519=self.settings.allow_ed25519,
            )
            if not decision.accepted or decision.csr is None:
                raise EnrollError(_csr_status(decision.reason), decision.reason, decision.detail)
            cert = sign_csr(self.ca, decision.csr, device_id, self.settings.cert_days)
            with self.sessions.begin() as db:
                _record_cert(db, cert, device_id, "reenroll")
                audit.record(
                    db,
                    actor,
                    "est.reenroll",
                    device_id,
                    detail={"serial": _hex(cert), "previous": _hex(current)},
                )
        except EnrollError as exc:
            audit.record_now(
                self.sessions, actor, "est.reenroll", device_id, f"refused:{exc.reason}"
            )
            raise
        log.info("renewed %s from %s, serial %s", device_id, source, _hex(cert))
        return Issued(device_id, cert)

    def _current_ok(self, current: x509.Certificate, device_id: str) -> None:
        if not contract.valid_device_id(device_id):
            raise EnrollError(403, "not_a_device", "the client certificate is not a device's")
        with self.sessions() as db:
            known = db.get(IssuedCertificate, _hex(current))
            if db.get(RevokedDevice, device_id) is not None:
                raise EnrollError(403, "device_revoked", f"{device_id} is revoked")
            if known is None or known.device_id != device_id:
                raise EnrollError(
                    403, "unknown_cert", "this certificate was not issued by enrollment"
                )
            if known.revoked_at is not None:
                raise EnrollError(403, "cert_revoked", "this certificate is revoked")


def _hex(cert: x509.Certificate) -> str:
    return format(cert.serial_number, "x")
