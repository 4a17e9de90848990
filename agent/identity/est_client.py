"""A small EST (RFC 7030) client: ``cacerts``, ``simpleenroll`` (one-time token),
``simplereenroll`` (mutual TLS with the current certificate). Used by the agent's renewal
and by the technician's tool; only the standard library's http.client and ssl.

Keys are made here with ``cryptography`` and never leave the caller: only the CSR (the
public key, signed) goes over the wire.
"""

from __future__ import annotations

import base64
import binascii
import http.client
import ssl
import urllib.parse
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import NameOID

from agent.errors import AgentError

PREFIX = "/.well-known/est"


class EstError(AgentError):
    """Enrollment failed: the server refused (status and its reason) or was not reached."""

    def __init__(self, message: str, status: int = 0, reason: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def key_der_sec1(key: ec.EllipticCurvePrivateKey) -> bytes:
    """The DER form MicroPython's mbedtls reads."""
    return key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )


def load_key(path: Path) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(Path(path).read_bytes(), None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise EstError(f"{path}: not an EC private key")
    return key


def make_csr(key: ec.EllipticCurvePrivateKey, device_id: str) -> bytes:
    """DER PKCS#10 with CN = device id and nothing else."""
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device_id)]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.DER)


def parse_certs_only(body: bytes) -> list[x509.Certificate]:
    try:
        der = base64.b64decode(b"".join(body.split()), validate=True)
        return pkcs7.load_der_pkcs7_certificates(der)
    except (binascii.Error, ValueError) as exc:
        raise EstError(f"answer is not a base64 PKCS#7 certs-only body: {exc}") from exc


class EstClient:
    def __init__(
        self,
        base_url: str,
        ca_file: Path,
        *,
        cert: Path | None = None,
        key: Path | None = None,
        timeout: float = 15.0,
    ) -> None:
        url = urllib.parse.urlsplit(base_url)
        if url.scheme != "https" or not url.hostname:
            raise EstError(f"EST address must be https://host:port, not {base_url!r}")
        self.host = url.hostname
        self.port = url.port or 443
        self.timeout = timeout
        self.context = ssl.create_default_context(cafile=str(ca_file))
        if cert is not None and key is not None:
            try:
                self.context.load_cert_chain(str(cert), str(key))
            except (OSError, ssl.SSLError) as exc:
                raise EstError(f"cannot load the client certificate: {exc}") from exc

    def _request(
        self, method: str, op: str, body: bytes | None, headers: dict[str, str]
    ) -> tuple[int, str, bytes]:
        conn = http.client.HTTPSConnection(
            self.host, self.port, timeout=self.timeout, context=self.context
        )
        try:
            conn.request(method, f"{PREFIX}/{op}", body=body, headers=headers)
            resp = conn.getresponse()
            return resp.status, resp.getheader("content-type", ""), resp.read()
        except (OSError, http.client.HTTPException) as exc:
            raise EstError(f"EST server {self.host}:{self.port} not reached: {exc}") from exc
        finally:
            conn.close()

    def _certs(self, status: int, ctype: str, body: bytes) -> list[x509.Certificate]:
        if status != 200:
            text = body.decode(errors="replace").strip()[:300]
            raise EstError(f"EST refused ({status}): {text}", status, text.split(":")[0])
        if not ctype.startswith("application/pkcs7-mime"):
            raise EstError(f"unexpected content type {ctype!r}")
        return parse_certs_only(body)

    def cacerts(self) -> list[x509.Certificate]:
        return self._certs(*self._request("GET", "cacerts", None, {}))

    def _enroll(self, op: str, csr_der: bytes, headers: dict[str, str]) -> x509.Certificate:
        headers = {
            "Content-Type": "application/pkcs10",
            "Content-Transfer-Encoding": "base64",
            **headers,
        }
        certs = self._certs(*self._request("POST", op, base64.b64encode(csr_der), headers))
        if len(certs) != 1:
            raise EstError(f"expected one certificate, got {len(certs)}")
        return certs[0]

    def simpleenroll(self, csr_der: bytes, token: str, device_id: str) -> x509.Certificate:
        basic = base64.b64encode(f"{device_id}:{token}".encode()).decode()
        return self._enroll("simpleenroll", csr_der, {"Authorization": f"Basic {basic}"})

    def simplereenroll(self, csr_der: bytes) -> x509.Certificate:
        return self._enroll("simplereenroll", csr_der, {})


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)
