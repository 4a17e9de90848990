"""What the CA does for enrollment and revocation: sign a checked CSR, write the CRL, the
EST listener's certificate, and PKCS#7 certs-only bodies (RFC 7030).

The CSR must have passed ``fleet_server.identity.csr_policy`` first; this module does not judge it.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.serialization import pkcs7

from fleet_server.identity.ca import (
    CERT_MODE,
    KEY_MODE,
    CAError,
    CertificateAuthority,
    _key_pem,
    _write,
)

log = logging.getLogger(__name__)

CRL_FILE = "crl.pem"
EST_CERT = "est.pem"
EST_KEY = "est.key"


@dataclass(frozen=True)
class Revoked:
    serial: int
    revoked_at: dt.datetime


def crl_path(ca: CertificateAuthority) -> Path:
    return ca.dir / CRL_FILE


def issuing_cert(ca: CertificateAuthority) -> x509.Certificate:
    return ca._issuing()[1]


def root_cert(ca: CertificateAuthority) -> x509.Certificate:
    return x509.load_pem_x509_certificate(ca.root_cert_path.read_bytes())


def sign_csr(
    ca: CertificateAuthority, csr: x509.CertificateSigningRequest, device_id: str, days: float
) -> x509.Certificate:
    """A client certificate for ``device_id`` on the CSR's public key (policy already passed)."""
    key = csr.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey):
        raise CAError("only EC P-256 and Ed25519 keys are signed")
    return ca._leaf(device_id, key, days, client=True)


def write_crl(
    ca: CertificateAuthority, revoked: Iterable[Revoked], days: float = 7.0
) -> x509.CertificateRevocationList:
    """Sign and write the issuing CA's CRL atomically; valid for ``days``.

    Mosquitto refuses every client once its CRL has passed ``next_update``: the server
    rewrites it well before (``fleet_server.identity.revocation.CrlKeeper``).
    """
    key, issuing = ca._issuing()
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuing.subject)
        .last_update(now - dt.timedelta(minutes=5))
        .next_update(now + dt.timedelta(days=days))
        .add_extension(x509.CRLNumber(int(now.timestamp() * 1000)), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()), False)
    )
    for item in revoked:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(item.serial)
            .revocation_date(item.revoked_at)
            .build()
        )
    crl = builder.sign(key, hashes.SHA256())
    _write(crl_path(ca), crl.public_bytes(serialization.Encoding.PEM), CERT_MODE)
    return crl


def read_crl(ca: CertificateAuthority) -> x509.CertificateRevocationList | None:
    try:
        return x509.load_pem_x509_crl(crl_path(ca).read_bytes())
    except (FileNotFoundError, ValueError):
        return None


def ensure_est_cert(ca: CertificateAuthority, hosts: list[str], days: int = 825) -> Path:
    """The EST listener's TLS certificate (leaf + issuing chain); made once."""
    cert_path = ca.dir / EST_CERT
    if cert_path.exists() and (ca.dir / EST_KEY).exists():
        return cert_path
    key = ec.generate_private_key(ec.SECP256R1())
    cert = ca._leaf("camfleet enrollment", key.public_key(), days, client=False, hosts=hosts)
    _write(ca.dir / EST_KEY, _key_pem(key), KEY_MODE)
    pem = cert.public_bytes(serialization.Encoding.PEM)
    _write(cert_path, pem + issuing_cert(ca).public_bytes(serialization.Encoding.PEM), CERT_MODE)
    log.info("EST listener certificate written to %s", cert_path)
    return cert_path


def certs_only(certs: list[x509.Certificate]) -> bytes:
    """A degenerate PKCS#7 SignedData holding ``certs`` (DER), as RFC 7030 answers."""
    return pkcs7.serialize_certificates(certs, serialization.Encoding.DER)


def ca_certs(ca: CertificateAuthority) -> list[x509.Certificate]:
    """What ``/cacerts`` returns: the issuing CA and the root."""
    return [issuing_cert(ca), root_cert(ca)]
