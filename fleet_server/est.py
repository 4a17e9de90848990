"""EST (RFC 7030) over HTTPS: ``/.well-known/est/cacerts``, ``simpleenroll`` and
``simplereenroll``, on a listener of its own.

Why its own listener: re-enrollment is authorised by the device's current certificate, so
the TLS layer must ask for a client certificate (optional: first enrollment has none and
uses a one-time token). The REST API stays plain HTTP behind the operators' proxy; this
listener is uvicorn with ``ssl_cert_reqs=CERT_OPTIONAL`` and the issuing CA bundle as
``ssl_ca_certs``. uvicorn does not put the peer certificate into the ASGI scope, so
``TLSH11Protocol`` adds the ASGI TLS extension (``scope["extensions"]["tls"]``,
``client_cert_chain``) from the connection's ``ssl_object``.

Bodies as the RFC has them: base64 DER PKCS#10 in (``application/pkcs10``), base64 DER
PKCS#7 certs-only out (``application/pkcs7-mime; smime-type=certs-only``,
``Content-Transfer-Encoding: base64``). First enrollment takes the token as
``Authorization: Bearer <token>`` or HTTP Basic (user = device id, password = token), as
EST clients send. Every refusal is a 4xx whose plain-text body starts with the reason.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import ssl
import threading
from typing import Any

import uvicorn
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from fastapi import FastAPI, Request, Response
from prometheus_client import Counter
from starlette.concurrency import run_in_threadpool
from uvicorn.protocols.http.h11_impl import H11Protocol

from fleet_server.ca import CertificateAuthority
from fleet_server.ca_ops import ca_certs, certs_only, ensure_est_cert
from fleet_server.enrollment import EnrollError, Enrollment

log = logging.getLogger(__name__)

PREFIX = "/.well-known/est"
PKCS7 = "application/pkcs7-mime; smime-type=certs-only"
PKCS10 = "application/pkcs10"


def _b64(der: bytes) -> bytes:
    text = base64.b64encode(der)
    return b"\n".join(text[i : i + 64] for i in range(0, len(text), 64)) + b"\n"


def _pkcs7_response(certs: list[x509.Certificate]) -> Response:
    return Response(
        _b64(certs_only(certs)),
        media_type=PKCS7,
        headers={"Content-Transfer-Encoding": "base64"},
    )


def _refusal(exc: EnrollError) -> Response:
    headers = {"WWW-Authenticate": 'Basic realm="est"'} if exc.status == 401 else None
    return Response(f"{exc.reason}: {exc.detail}\n", exc.status, headers, "text/plain")


def _token_from(request: Request) -> tuple[str, str | None]:
    """(token, device id claimed by HTTP Basic or None)."""
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer":
        return value.strip(), None
    if scheme.lower() == "basic":
        try:
            user, _, password = (
                base64.b64decode(value.strip(), validate=True).decode().partition(":")
            )
        except (binascii.Error, UnicodeDecodeError):
            return "", None
        return password, user or None
    return "", None


async def _read_body(request: Request, limit: int) -> bytes:
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise EnrollError(413, "too_large", f"body is {length} bytes, limit {limit}")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise EnrollError(413, "too_large", f"body exceeds {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _check_type(request: Request) -> None:
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != PKCS10:
        raise EnrollError(415, "bad_content_type", f"Content-Type must be {PKCS10}")


def client_cert_der(scope: dict[str, Any]) -> bytes | None:
    """The peer's leaf certificate (DER) from the ASGI TLS extension, if it sent one."""
    tls = (scope.get("extensions") or {}).get("tls") or {}
    chain = tls.get("client_cert_chain") or []
    if not chain:
        return None
    try:
        return x509.load_pem_x509_certificate(chain[0].encode()).public_bytes(
            serialization.Encoding.DER
        )
    except ValueError:
        return None


def create_est_app(ca: CertificateAuthority, enrollment: Enrollment, registry: Any) -> FastAPI:
    app = FastAPI(title="camfleet EST", docs_url=None, redoc_url=None, openapi_url=None)
    requests = Counter(
        "camfleet_est_requests_total",
        "EST requests by operation and outcome (ok or the refusal reason)",
        ["op", "outcome"],
        registry=registry,
    )
    limit = enrollment.settings.max_csr_bytes

    async def _checked_body(request: Request, action: str, source: str) -> bytes:
        try:
            _check_type(request)
            return await _read_body(request, limit)
        except EnrollError as exc:
            await run_in_threadpool(enrollment.record_refusal, action, source, exc.reason)
            raise

    @app.get(PREFIX + "/cacerts")
    def cacerts() -> Response:
        requests.labels(op="cacerts", outcome="ok").inc()
        return _pkcs7_response(ca_certs(ca))

    @app.post(PREFIX + "/simpleenroll")
    async def simpleenroll(request: Request) -> Response:
        source = request.client.host if request.client else "unknown"
        try:
            body = await _checked_body(request, "est.enroll", source)
            token, claimed = _token_from(request)
            issued = await run_in_threadpool(enrollment.enroll, token, body, source, claimed)
        except EnrollError as exc:
            requests.labels(op="simpleenroll", outcome=exc.reason).inc()
            return _refusal(exc)
        requests.labels(op="simpleenroll", outcome="ok").inc()
        return _pkcs7_response([issued.cert])

    @app.post(PREFIX + "/simplereenroll")
    async def simplereenroll(request: Request) -> Response:
        source = request.client.host if request.client else "unknown"
        try:
            body = await _checked_body(request, "est.reenroll", source)
            der = client_cert_der(dict(request.scope))
            issued = await run_in_threadpool(enrollment.reenroll, der, body, source)
        except EnrollError as exc:
            requests.labels(op="simplereenroll", outcome=exc.reason).inc()
            return _refusal(exc)
        requests.labels(op="simplereenroll", outcome="ok").inc()
        return _pkcs7_response([issued.cert])

    return app


class TLSH11Protocol(H11Protocol):
    """uvicorn's h11 protocol plus the ASGI TLS extension (the client certificate)."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        ssl_object = transport.get_extra_info("ssl_object")
        chain: list[str] = []
        if isinstance(ssl_object, ssl.SSLObject):
            der = ssl_object.getpeercert(binary_form=True)
            if der:
                chain.append(ssl.DER_cert_to_PEM_cert(der))
        tls = {
            "server_cert": None,
            "client_cert_chain": chain,
            "client_cert_name": None,
            "client_cert_error": None,
            "tls_version": None,
            "cipher_suite": None,
        }
        inner = self.app

        async def with_tls(scope: Any, receive: Any, send: Any) -> None:
            scope.setdefault("extensions", {})["tls"] = tls
            await inner(scope, receive, send)

        self.app = with_tls


class EstListener:
    """The EST HTTPS listener, in a thread of the fleet server process."""

    def __init__(
        self, app: FastAPI, ca: CertificateAuthority, host: str, port: int, hosts: list[str]
    ) -> None:
        cert = ensure_est_cert(ca, hosts)
        config = uvicorn.Config(
            app,
            host=host,
            port=port,
            http=TLSH11Protocol,
            ssl_certfile=str(cert),
            ssl_keyfile=str(ca.dir / "est.key"),
            ssl_ca_certs=str(ca.bundle_path),
            ssl_cert_reqs=ssl.CERT_OPTIONAL,
            log_level="warning",
            access_log=False,
            lifespan="off",
        )
        self.server = uvicorn.Server(config)  # in a thread: no signal handlers
        self.thread = threading.Thread(target=self.server.run, name="est-listener", daemon=True)
        self.host = host
        self.port = port

    def start(self, timeout: float = 10.0) -> None:
        self.thread.start()
        deadline = threading.Event()
        for _ in range(int(timeout / 0.05)):
            if self.server.started or not self.thread.is_alive():
                break
            deadline.wait(0.05)
        if not self.server.started:
            raise RuntimeError(f"EST listener did not start on {self.host}:{self.port}")
        log.info("EST listener on https://%s:%d%s", self.host, self.port, PREFIX)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
