"""A small certificate authority: root, issuing CA, broker and server certificates, devices.

Layout of ``pki_dir``::

    root.key root.pem           root CA (may be moved offline once the issuing CA exists)
    issuing.key issuing.pem     issuing CA, signs every leaf
    ca-bundle.pem               issuing + root: what the broker trusts for client certs
    broker.key broker.pem       the broker's TLS server certificate (leaf + issuing chain)
    server.key server.pem       the fleet server's shared MQTT identity (CN _fleet-server): tools
    servers/_<client id>.pem    each server worker's own identity (server_identity.py)
    devices/<id>/               key.pem cert.pem root.pem (+ key.der cert.der root.der)
    crl.pem                     CRL of the issuing CA (the broker's ``crlfile``)
    est.key est.pem             TLS server certificate of the EST listener

Every key and certificate is written atomically; keys with mode 0600. Signing CSRs, the CRL
and CA rotation: ``fleet_server/identity/ca_ops.py`` and docs/identity.md.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from common.files import atomic_write
from firmware import contract

log = logging.getLogger(__name__)

KEY_MODE = 0o600
CERT_MODE = 0o644


class CAError(Exception):
    """The CA cannot do what was asked (missing CA, bad device id, ...)."""


@dataclass(frozen=True)
class DeviceCredentials:
    device_id: str
    directory: Path
    key_pem: Path
    cert_pem: Path
    root_pem: Path


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "camfleet"),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


def _write(path: Path, data: bytes, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(str(path), data, mode)


class CertificateAuthority:
    def __init__(self, pki_dir: Path) -> None:
        self.dir = Path(pki_dir)
        self._issuing_cache: tuple[ec.EllipticCurvePrivateKey, x509.Certificate] | None = None

    # ---------------------------------------------------------------- paths
    @property
    def root_cert_path(self) -> Path:
        return self.dir / "root.pem"

    @property
    def bundle_path(self) -> Path:
        return self.dir / "ca-bundle.pem"

    @property
    def broker_cert_path(self) -> Path:
        return self.dir / "broker.pem"

    @property
    def broker_key_path(self) -> Path:
        return self.dir / "broker.key"

    @property
    def server_cert_path(self) -> Path:
        return self.dir / "server.pem"

    @property
    def server_key_path(self) -> Path:
        return self.dir / "server.key"

    def exists(self) -> bool:
        return (self.dir / "issuing.key").exists() and self.root_cert_path.exists()

    # ---------------------------------------------------------------- creation
    def init(self, broker_hosts: list[str] | None = None, root_days: int = 3650) -> None:
        """Create root and issuing CA, the broker certificate and the server identity.

        Idempotent: an existing CA is kept (rotation is a deliberate, documented act).
        """
        if self.exists():
            log.info("CA already present in %s", self.dir)
        else:
            self.dir.mkdir(parents=True, exist_ok=True)
            root_key = _new_key()
            root = self._ca_cert(_name("camfleet root CA"), root_key, root_key, None, root_days, 1)
            issuing_key = _new_key()
            issuing = self._ca_cert(
                _name("camfleet issuing CA"), issuing_key, root_key, root, root_days // 2, 0
            )
            _write(self.dir / "root.key", _key_pem(root_key), KEY_MODE)
            _write(self.root_cert_path, _pem(root), CERT_MODE)
            _write(self.dir / "issuing.key", _key_pem(issuing_key), KEY_MODE)
            _write(self.dir / "issuing.pem", _pem(issuing), CERT_MODE)
            _write(self.bundle_path, _pem(issuing) + _pem(root), CERT_MODE)
            log.info("created root and issuing CA in %s", self.dir)
        if not self.broker_cert_path.exists():
            self.issue_broker_cert(broker_hosts or ["localhost", "127.0.0.1", "::1"])
        if not (self.dir / "crl.pem").exists():
            from fleet_server.identity.ca_ops import write_crl

            write_crl(self, [], days=7)
        if not self.server_cert_path.exists():
            key = _new_key()
            cert = self._leaf(contract.SERVER_IDENTITY, key.public_key(), 825, client=True)
            _write(self.server_key_path, _key_pem(key), KEY_MODE)
            _write(self.server_cert_path, _pem(cert) + _pem(self._issuing()[1]), CERT_MODE)

    def issue_server_identity(self, cn: str, cert_path: Path, key_path: Path, days: float) -> None:
        """A server worker's MQTT client certificate (``fleet_server.identity.server_identity``);
        the CN must start with ``_`` (never a device id)."""
        if not cn.startswith("_") or contract.valid_device_id(cn):
            raise CAError(f"server identities start with '_', not {cn!r}")
        key = _new_key()
        cert = self._leaf(cn, key.public_key(), days, client=True)
        cert_path.parent.mkdir(parents=True, exist_ok=True)
        _write(key_path, _key_pem(key), KEY_MODE)
        _write(cert_path, _pem(cert) + _pem(self._issuing()[1]), CERT_MODE)

    def issue_broker_cert(self, hosts: list[str], days: int = 825) -> None:
        key = _new_key()
        cert = self._leaf("camfleet broker", key.public_key(), days, client=False, hosts=hosts)
        _write(self.broker_key_path, _key_pem(key), KEY_MODE)
        _write(self.broker_cert_path, _pem(cert) + _pem(self._issuing()[1]), CERT_MODE)

    def issue_device(self, device_id: str, out_dir: Path, days: int = 30) -> DeviceCredentials:
        """Make a key pair and certificate for a device (PEM and DER) into ``out_dir``.

        The key is made here, for nodes that cannot make their own; enrollment of boxes that
        make their own key is the EST path (certificates issue).
        """
        if not contract.valid_device_id(device_id):
            raise CAError(f"invalid device id {device_id!r}: 3-64 chars of a-z, 0-9 and '-'")
        key = _new_key()
        cert = self._leaf(device_id, key.public_key(), days, client=True)
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        root_pem = self.root_cert_path.read_bytes()
        root = x509.load_pem_x509_certificate(root_pem)
        _write(out / "key.pem", _key_pem(key), KEY_MODE)
        _write(out / "cert.pem", _pem(cert) + _pem(self._issuing()[1]), CERT_MODE)
        _write(out / "root.pem", root_pem, CERT_MODE)
        # DER for MicroPython (its ssl refuses PEM). mbedtls reads a SEC1 EC key.
        der_key = key.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
        _write(out / "key.der", der_key, KEY_MODE)
        _write(out / "cert.der", cert.public_bytes(serialization.Encoding.DER), CERT_MODE)
        _write(out / "root.der", root.public_bytes(serialization.Encoding.DER), CERT_MODE)
        log.info(
            "issued certificate for %s, serial %x, %d days", device_id, cert.serial_number, days
        )
        return DeviceCredentials(
            device_id, out, out / "key.pem", out / "cert.pem", out / "root.pem"
        )

    # ---------------------------------------------------------------- internals
    def _issuing(self) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        if self._issuing_cache is not None:
            return self._issuing_cache
        if not self.exists():
            raise CAError(f"no CA in {self.dir}: run 'camfleet-server init' first")
        key = serialization.load_pem_private_key((self.dir / "issuing.key").read_bytes(), None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise CAError("issuing key is not an EC key")
        cert = x509.load_pem_x509_certificate((self.dir / "issuing.pem").read_bytes())
        self._issuing_cache = (key, cert)  # a rotation is a restart (docs/identity.md)
        return key, cert

    @staticmethod
    def _ca_cert(
        subject: x509.Name,
        key: ec.EllipticCurvePrivateKey,
        signer: ec.EllipticCurvePrivateKey,
        issuer: x509.Certificate | None,
        days: int,
        path_length: int,
    ) -> x509.Certificate:
        now = _now()
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer.subject if issuer else subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
            .add_extension(
                _key_usage(ca=True),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        )
        if issuer is not None:
            builder = builder.add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.public_key()), False
            )
        return builder.sign(signer, hashes.SHA256())

    def _leaf(
        self,
        cn: str,
        public_key: ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey,
        days: float,
        *,
        client: bool,
        hosts: list[str] | None = None,
    ) -> x509.Certificate:
        issuing_key, issuing = self._issuing()
        now = _now()
        eku = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(cn))
            .issuer_name(issuing.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                _key_usage(ca=False),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage([eku]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(issuing_key.public_key()), False
            )
        )
        if hosts:
            builder = builder.add_extension(x509.SubjectAlternativeName(_san(hosts)), False)
        return builder.sign(issuing_key, hashes.SHA256())


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    """CAs sign certificates and CRLs; leaves sign (ECDSA) and agree keys (ECDHE)."""
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=not ca,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def _san(hosts: list[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)
