"""The CSR policy (a pure function) and the enrollment records on SQLite and PostgreSQL:
a refusal stores nothing, a token is spent once even when two requests race."""

from __future__ import annotations

import base64
import datetime as dt
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID
from sqlalchemy import func, select

from agent.identity import est_client
from fleet_server.access.audit import SYSTEM
from fleet_server.db import make_engine, make_sessionmaker
from fleet_server.identity import csr_policy
from fleet_server.identity.ca import CertificateAuthority
from fleet_server.identity.ca_ops import Revoked, certs_only, read_crl, write_crl
from fleet_server.identity.enrollment import EnrollError, Enrollment
from fleet_server.identity.model import AuditEntry, EnrollmentToken, IssuedCertificate
from fleet_server.identity.settings import IdentitySettings
from fleet_server.identity.tokens import token_hash
from fleet_server.migrate import upgrade


def _csr(key: object, names: list[x509.NameAttribute], san: bool = False) -> bytes:
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name(names))
    if san:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName("evil.example")]), False
        )
    algo = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    csr = builder.sign(key, algo)  # type: ignore[arg-type]
    return base64.b64encode(csr.public_bytes(serialization.Encoding.DER))


def _cn(value: str) -> list[x509.NameAttribute]:
    return [x509.NameAttribute(NameOID.COMMON_NAME, value)]


P256 = ec.generate_private_key(ec.SECP256R1())
ONE_CSR = _csr(P256, _cn("dev-1"))  # ECDSA signatures differ each time: split one request


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (_csr(P256, _cn("dev-1")), "ok"),
        (b"  " + ONE_CSR[:40] + b"\n" + ONE_CSR[40:], "ok"),
        (_csr(P256, _cn("dev-2")), csr_policy.WRONG_SUBJECT),
        (_csr(P256, [*_cn("dev-1"), *_cn("dev-1")]), csr_policy.WRONG_SUBJECT),
        (_csr(P256, [*_cn("dev-1"), x509.NameAttribute(NameOID.EMAIL_ADDRESS, "a@b")]),
         csr_policy.WRONG_SUBJECT),
        (_csr(P256, _cn("dev-1"), san=True), csr_policy.EXTRA_NAMES),
        (_csr(ec.generate_private_key(ec.SECP384R1()), _cn("dev-1")), csr_policy.BAD_KEY),
        (_csr(rsa.generate_private_key(65537, 2048), _cn("dev-1")), csr_policy.BAD_KEY),
        (_csr(ed25519.Ed25519PrivateKey.generate(), _cn("dev-1")), csr_policy.BAD_KEY),
        (b"%%%%", csr_policy.BAD_BASE64),
        (base64.b64encode(b"\x30\x03\x02\x01\x00"), csr_policy.BAD_CSR),
        (b"", csr_policy.BAD_CSR),
        (b"A" * 20000, csr_policy.TOO_LARGE),
    ],
)  # fmt: skip
def test_policy_decisions(body: bytes, reason: str) -> None:
    decision = csr_policy.check_csr(body, "dev-1")
    assert decision.reason == reason, decision.detail
    assert decision.accepted == (reason == "ok")
    assert (decision.csr is not None) == decision.accepted


def test_ed25519_only_when_allowed() -> None:
    body = _csr(ed25519.Ed25519PrivateKey.generate(), _cn("dev-1"))
    assert csr_policy.check_csr(body, "dev-1", allow_ed25519=True).accepted


def test_broken_signature_refused() -> None:
    der = bytearray(base64.b64decode(_csr(P256, _cn("dev-1"))))
    der[-2] ^= 0x55
    decision = csr_policy.check_csr(base64.b64encode(bytes(der)), "dev-1")
    assert decision.reason in (csr_policy.BAD_SIGNATURE, csr_policy.BAD_CSR)
    assert not decision.accepted


def test_crl_and_pkcs7(ca: CertificateAuthority, tmp_path: Path) -> None:
    now = dt.datetime.now(dt.UTC)
    crl = write_crl(ca, [Revoked(0x1234, now), Revoked(0xABCD, now)], days=2)
    issuing = x509.load_pem_x509_certificate((ca.dir / "issuing.pem").read_bytes())
    assert crl.is_signature_valid(issuing.public_key())  # type: ignore[arg-type]
    loaded = read_crl(ca)
    assert loaded is not None and {r.serial_number for r in loaded} == {0x1234, 0xABCD}
    assert (ca.dir / "crl.pem").stat().st_mode & 0o777 == 0o644
    for key in ("root.key", "issuing.key", "broker.key", "server.key"):
        assert (ca.dir / key).stat().st_mode & 0o777 == 0o600
    body = base64.b64encode(certs_only([issuing]))
    assert est_client.parse_certs_only(body) == [issuing]
    write_crl(ca, [], days=7)  # leave the session CA with an empty, fresh CRL


@pytest.fixture
def enrollment(database_url: str, ca: CertificateAuthority) -> Enrollment:
    upgrade(database_url)
    return Enrollment(make_sessionmaker(make_engine(database_url)), ca, IdentitySettings())


def _count(enrollment: Enrollment, model: type) -> int:
    with enrollment.sessions() as db:
        return int(db.scalar(select(func.count()).select_from(model)) or 0)


def test_refusal_stores_nothing_and_token_is_single_use(enrollment: Enrollment) -> None:
    token, _ = enrollment.create_token("db-dev-01", "agent", SYSTEM, "site-1", 600)
    with pytest.raises(EnrollError) as info:
        enrollment.enroll(token, _csr(P256, _cn("db-dev-99")), "127.0.0.1", None)
    assert info.value.reason == "wrong_subject"
    assert _count(enrollment, IssuedCertificate) == 0
    with enrollment.sessions() as db:
        row = db.get(EnrollmentToken, token_hash(token))
        assert row is not None and row.used_at is None
    # two requests race with one token: exactly one certificate
    results: list[str] = []

    def attempt() -> None:
        try:
            enrollment.enroll(token, _csr(P256, _cn("db-dev-01")), "127.0.0.1", None)
            results.append("ok")
        except EnrollError as exc:
            results.append(exc.reason)

    threads = [threading.Thread(target=attempt) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(results) == ["ok", "token_used", "token_used", "token_used"]
    assert _count(enrollment, IssuedCertificate) == 1
    with enrollment.sessions() as db:
        outcomes = db.scalars(select(AuditEntry.outcome)).all()
    assert outcomes.count("ok") >= 2 and "refused:wrong_subject" in outcomes
