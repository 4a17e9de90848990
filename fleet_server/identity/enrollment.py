"""Enrollment decisions and their records, apart from HTTP: one-time tokens, first enrollment
(token + CSR), re-enrollment (current certificate + CSR).

A refusal raises ``EnrollError(status, reason, detail)`` and stores nothing but its audit
entry: the token stays unused, no certificate is recorded. A token is spent in the same
transaction that records the certificate and its audit entry, by one conditional update
(unused, not expired, device not revoked), so requests racing with one token get one
certificate, whichever process or database connection serves them.

The hot path (EST, hundreds per second) uses SQLAlchemy Core on the tables, one read and
one short write transaction per enrollment; the ORM classes stay the schema.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, cast

from cryptography import x509
from cryptography.x509.oid import NameOID
from sqlalchemy import Table, bindparam, exists, insert, select, update
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import Session, sessionmaker

from firmware import contract
from fleet_server.access import audit
from fleet_server.access.audit import Actor
from fleet_server.identity import csr_policy, tokens
from fleet_server.identity.ca import CertificateAuthority
from fleet_server.identity.ca_ops import sign_csr
from fleet_server.identity.model import (
    AuditEntry,
    EnrollmentToken,
    IssuedCertificate,
    RevokedDevice,
)
from fleet_server.identity.settings import IdentitySettings

log = logging.getLogger(__name__)

KINDS = ("agent", "node")

_TOKENS = cast(Table, EnrollmentToken.__table__)
_CERTS = cast(Table, IssuedCertificate.__table__)
_REVOKED = cast(Table, RevokedDevice.__table__)
_AUDIT = cast(Table, AuditEntry.__table__)

# Statements built once (the EST hot path runs them hundreds of times a second).
_INSERT_CERT = insert(_CERTS)
_INSERT_AUDIT = insert(_AUDIT)
_SPEND = (
    update(_TOKENS)
    .where(
        _TOKENS.c.token_hash == bindparam("digest"),
        _TOKENS.c.used_at.is_(None),
        _TOKENS.c.expires_at >= bindparam("now"),
        ~exists().where(_REVOKED.c.device_id == bindparam("device")),
        # a plain token cannot give a device that has a valid certificate a second one
        _TOKENS.c.replacement
        | ~exists().where(
            _CERTS.c.device_id == bindparam("device"),
            _CERTS.c.revoked_at.is_(None),
            _CERTS.c.not_after > bindparam("now"),
        ),
    )
    .values(used_at=bindparam("now"), used_from=bindparam("source"))
)
_TOKEN_STATE = (
    select(
        _TOKENS.c.device_id,
        _TOKENS.c.replacement,
        _TOKENS.c.used_at,
        _TOKENS.c.expires_at,
        _REVOKED.c.device_id.label("revoked"),
    )
    .select_from(_TOKENS.outerjoin(_REVOKED, _REVOKED.c.device_id == _TOKENS.c.device_id))
    .where(_TOKENS.c.token_hash == bindparam("digest"))
)
_CERT_STATE = select(_CERTS.c.device_id, _CERTS.c.revoked_at, _CERTS.c.superseded_at).where(
    _CERTS.c.serial == bindparam("serial")
)
# a renewal supersedes every earlier certificate of the device still valid
_SUPERSEDE = (
    update(_CERTS)
    .where(
        _CERTS.c.device_id == bindparam("device"),
        _CERTS.c.revoked_at.is_(None),
        _CERTS.c.superseded_at.is_(None),
    )
    .values(superseded_at=bindparam("now"))
)
# a replacement enrollment revokes them at once (the CRL follows within crl_check_s)
_REVOKE_ALL = (
    update(_CERTS)
    .where(_CERTS.c.device_id == bindparam("device"), _CERTS.c.revoked_at.is_(None))
    .values(revoked_at=bindparam("now"))
)
_DEVICE_REVOKED = select(_REVOKED.c.device_id).where(_REVOKED.c.device_id == bindparam("device"))


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


def _cert_row(cert: x509.Certificate, device_id: str, via: str, now: float) -> dict[str, Any]:
    return {
        "serial": _hex(cert),
        "device_id": device_id,
        "not_before": cert.not_valid_before_utc.timestamp(),
        "not_after": cert.not_valid_after_utc.timestamp(),
        "issued_at": now,
        "via": via,
        "revoked_at": None,
        "superseded_at": None,
    }


@dataclass(frozen=True)
class _Token:
    token_hash: str
    device_id: str
    replacement: bool = False


REPLACERS = ("operator", "admin")  # roles that may mint a replacement token


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
        bind = sessions.kw.get("bind")
        if not isinstance(bind, Engine):
            raise TypeError("Enrollment needs a sessionmaker bound to an Engine")
        self.engine: Engine = bind

    # ---------------------------------------------------------------- tokens
    def create_token(
        self, device_id: str, kind: str, by: Actor, site_id: str | None, ttl_s: int | None
    ) -> tuple[str, float]:
        """A one-time enrollment token for ``device_id``; (token, expires_at).

        For a device that already has a valid certificate it is a *replacement* token: only
        an operator may make one, it is audited as ``token.replace``, and the enrollment
        that spends it revokes the device's earlier certificates."""
        return self.create_token_ex(device_id, kind, by, site_id, ttl_s)[:2]

    def create_token_ex(
        self, device_id: str, kind: str, by: Actor, site_id: str | None, ttl_s: int | None
    ) -> tuple[str, float, bool]:
        """``create_token`` that also says whether the token is a replacement."""
        if not contract.valid_device_id(device_id):
            raise EnrollError(400, "bad_device_id", f"invalid device id {device_id!r}")
        if kind not in KINDS:
            raise EnrollError(400, "bad_kind", f"kind must be one of {KINDS}")
        ttl = self.settings.token_ttl_s if ttl_s is None else ttl_s
        token = tokens.new_token(tokens.ENROLL_PREFIX)
        now = time.time()
        try:
            replacement = self._store_token(token, device_id, kind, by, site_id, ttl, now)
        except EnrollError as exc:  # audited in a transaction of its own (the other rolled back)
            action = "token.replace" if exc.reason == "needs_operator" else "token.create"
            audit.record_now(self.sessions, by, action, device_id, f"refused:{exc.reason}")
            raise
        if replacement:
            log.warning("replacement token for %s made by %s", device_id, by.name)
        return token, now + ttl, replacement

    def _store_token(
        self, token: str, device_id: str, kind: str, by: Actor, site_id: str | None,
        ttl: int, now: float,
    ) -> bool:  # fmt: skip
        with self.sessions.begin() as db:
            if db.get(RevokedDevice, device_id) is not None:
                raise EnrollError(409, "device_revoked", f"{device_id} is revoked")
            valid = db.execute(
                select(_CERTS.c.serial)
                .where(
                    _CERTS.c.device_id == device_id,
                    _CERTS.c.revoked_at.is_(None),
                    _CERTS.c.not_after > now,
                )
                .limit(1)
            ).first()
            replacement = valid is not None
            action = "token.replace" if replacement else "token.create"
            if replacement and by.role not in REPLACERS:
                raise EnrollError(
                    403, "needs_operator",
                    f"{device_id} has a valid certificate: a replacement token needs an operator",
                )  # fmt: skip
            db.add(
                EnrollmentToken(
                    token_hash=tokens.token_hash(token),
                    device_id=device_id,
                    kind=kind,
                    site_id=site_id,
                    created_by=by.name,
                    created_at=now,
                    expires_at=now + ttl,
                    replacement=replacement,
                )
            )
            detail: dict[str, Any] = {"ttl_s": ttl, "kind": kind}
            if replacement:
                detail["replaces"] = valid.serial if valid is not None else ""
            audit.record(db, by, action, device_id, detail=detail)
        return replacement

    def record_refusal(self, action: str, source: str, reason: str) -> None:
        """Audit a request refused before it reached a decision (size, content type)."""
        self._refused(Actor("unknown", "device", source), action, "", reason)

    def _refused(self, actor: Actor, action: str, target: str, reason: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                _INSERT_AUDIT,
                audit.row(actor, action, target, f"refused:{reason}", {}, time.time()),
            )

    # ---------------------------------------------------------------- enroll
    def enroll(self, token: str, body: bytes, source: str, claimed_id: str | None) -> Issued:
        """First enrollment, authorised by a one-time token bound to one device id."""
        actor = Actor("token:?", "device", source)
        try:
            with self.engine.connect() as conn:  # one pooled connection for the request
                row = self._usable_token(conn, token, claimed_id)
                actor = Actor(f"token:{row.device_id}", "device", source)
                cert = self._checked_and_signed(body, row.device_id)
                self._spend_and_store(conn, row, cert, actor)
        except EnrollError as exc:
            self._refused(actor, "est.enroll", claimed_id or "", exc.reason)
            raise
        log.debug("enrolled %s from %s, serial %s", row.device_id, source, _hex(cert))
        return Issued(row.device_id, cert)

    def _checked_and_signed(self, body: bytes, device_id: str) -> x509.Certificate:
        decision = csr_policy.check_csr(
            body,
            device_id,
            max_body=self.settings.max_csr_bytes,
            allow_ed25519=self.settings.allow_ed25519,
        )
        if not decision.accepted or decision.csr is None:
            raise EnrollError(_csr_status(decision.reason), decision.reason, decision.detail)
        return sign_csr(self.ca, decision.csr, device_id, self.settings.cert_days)

    def _spend_and_store(
        self, conn: Connection, row: _Token, cert: x509.Certificate, actor: Actor
    ) -> None:
        """One transaction: spend the token if it is still usable, record the certificate
        and its audit entry. The WHERE clause is the single-use guarantee."""
        now = time.time()
        spend = {
            "digest": row.token_hash,
            "now": now,
            "device": row.device_id,
            "source": actor.source[:64],
        }
        with conn.begin():
            spent = conn.execute(_SPEND, spend)
            if spent.rowcount != 1:
                raise _unusable(conn, row, now)
            detail: dict[str, Any] = {"serial": _hex(cert)}
            if row.replacement:  # the device's earlier certificates die with this one
                done = conn.execute(_REVOKE_ALL, {"device": row.device_id, "now": now})
                detail["revoked"] = int(done.rowcount or 0)
            via = "replace" if row.replacement else "enroll"
            conn.execute(_INSERT_CERT, _cert_row(cert, row.device_id, via, now))
            conn.execute(
                _INSERT_AUDIT, audit.row(actor, "est.enroll", row.device_id, "ok", detail, now)
            )

    def _usable_token(self, conn: Connection, token: str, claimed_id: str | None) -> _Token:
        if not tokens.well_formed(token, tokens.ENROLL_PREFIX):
            raise EnrollError(401, "bad_token", "an enrollment token is required")
        digest = tokens.token_hash(token)
        found = _token_state(conn, digest)
        conn.rollback()  # end the read; the spend is a transaction of its own
        problem = _token_problem(found, claimed_id, time.time())
        if problem is not None:  # also when the token is unknown (found is None)
            raise problem
        return _Token(digest, str(found.device_id), bool(found.replacement))

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
            cert = self._checked_and_signed(body, device_id)
            now = time.time()
            detail = {"serial": _hex(cert), "previous": _hex(current)}
            with self.engine.begin() as conn:
                # the earlier certificates are superseded: on the CRL after the grace
                conn.execute(_SUPERSEDE, {"device": device_id, "now": now})
                conn.execute(_INSERT_CERT, _cert_row(cert, device_id, "reenroll", now))
                conn.execute(
                    _INSERT_AUDIT,
                    audit.row(actor, "est.reenroll", device_id, "ok", detail, now),
                )
        except EnrollError as exc:
            self._refused(actor, "est.reenroll", device_id, exc.reason)
            raise
        log.info("renewed %s from %s, serial %s", device_id, source, _hex(cert))
        return Issued(device_id, cert)

    def _current_ok(self, current: x509.Certificate, device_id: str) -> None:
        if not contract.valid_device_id(device_id):
            raise EnrollError(403, "not_a_device", "the client certificate is not a device's")
        with self.engine.connect() as conn:
            known = conn.execute(_CERT_STATE, {"serial": _hex(current)}).first()
            revoked = conn.execute(_DEVICE_REVOKED, {"device": device_id}).first()
        if revoked is not None:
            raise EnrollError(403, "device_revoked", f"{device_id} is revoked")
        if known is None or known.device_id != device_id:
            raise EnrollError(403, "unknown_cert", "this certificate was not issued by enrollment")
        if known.revoked_at is not None:
            raise EnrollError(403, "cert_revoked", "this certificate is revoked")
        if known.superseded_at is not None:  # a copy of an old one cannot renew either
            raise EnrollError(403, "cert_superseded", "a newer certificate replaced this one")


def _hex(cert: x509.Certificate) -> str:
    return format(cert.serial_number, "x")


def _token_state(conn: Connection, digest: str) -> Any:
    """The token's row with ``revoked`` (the device id when the device is revoked), or None."""
    return conn.execute(_TOKEN_STATE, {"digest": digest}).first()


def _token_problem(found: Any, claimed_id: str | None, now: float) -> EnrollError | None:
    """Why a token (its ``_token_state``) cannot enroll now, or None when it can."""
    if found is None:
        return EnrollError(401, "bad_token", "unknown enrollment token")
    if claimed_id is not None and claimed_id != found.device_id:
        return EnrollError(401, "bad_token", "token is not for this device id")
    if found.used_at is not None:
        return EnrollError(401, "token_used", "this enrollment token was used already")
    if found.expires_at < now:
        return EnrollError(401, "token_expired", "this enrollment token has expired")
    if found.revoked is not None:
        return EnrollError(403, "device_revoked", f"{found.device_id} is revoked")
    return None


def _unusable(conn: Connection, row: _Token, now: float) -> EnrollError:
    """Why the conditional spend matched no row (another request spent it first, the device
    has a valid certificate and this is no replacement token, ...)."""
    problem = _token_problem(_token_state(conn, row.token_hash), None, now)
    if problem is not None:
        return problem
    valid = conn.execute(
        select(_CERTS.c.serial)
        .where(
            _CERTS.c.device_id == row.device_id,
            _CERTS.c.revoked_at.is_(None),
            _CERTS.c.not_after > now,
        )
        .limit(1)
    ).first()
    if valid is not None and not row.replacement:
        return EnrollError(
            409, "already_enrolled",
            f"{row.device_id} has a valid certificate; it needs a replacement token",
        )  # fmt: skip
    return EnrollError(401, "token_used", "this enrollment token was used already")
