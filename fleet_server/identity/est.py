"""EST (RFC 7030) over HTTPS: ``/.well-known/est/cacerts``, ``simpleenroll`` and
``simplereenroll``, on a listener of its own.

Why its own listener: re-enrollment is authorised by the device's current certificate, so
the TLS layer must ask for a client certificate (optional: first enrollment has none and
uses a one-time token). The REST API stays plain HTTP behind the operators' proxy; this
listener is uvicorn with ``ssl_cert_reqs=CERT_OPTIONAL`` and the issuing CA bundle as
``ssl_ca_certs``. uvicorn does not put the peer certificate into the ASGI scope, so
``TLSHttpToolsProtocol`` (``TLSH11Protocol`` for other apps on such a listener) adds the
ASGI TLS extension (``scope["extensions"]["tls"]``, ``client_cert_chain``) from the
connection's ``ssl_object``.

The app is plain ASGI (three routes need no framework, and a fleet re-enrolling at once
pays for every layer), and it runs either in a thread of the server process or in several
worker processes sharing one listening socket (``fleet_server.identity.est_workers``).

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
from collections.abc import Awaitable, Callable, MutableMapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import uvicorn
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from fleet_server.identity.ca import CertificateAuthority
from fleet_server.identity.ca_ops import ca_certs, certs_only, ensure_est_cert
from fleet_server.identity.enrollment import EnrollError, Enrollment, Issued

log = logging.getLogger(__name__)

PREFIX = "/.well-known/est"
PKCS7 = "application/pkcs7-mime; smime-type=certs-only"
PKCS10 = "application/pkcs10"

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
CountFn = Callable[[str, str], None]  # (op, outcome): the EST requests metric


def _b64(der: bytes) -> bytes:
    text = base64.b64encode(der)
    return b"\n".join(text[i : i + 64] for i in range(0, len(text), 64)) + b"\n"


def token_from(authorization: str) -> tuple[str, str | None]:
    """(token, device id claimed by HTTP Basic or None) from an Authorization header."""
    scheme, _, value = authorization.partition(" ")
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


def _headers(scope: Scope) -> dict[str, str]:
    return {k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers", [])}


def _check_type(headers: dict[str, str]) -> None:
    ctype = headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != PKCS10:
        raise EnrollError(415, "bad_content_type", f"Content-Type must be {PKCS10}")


async def _read_body(headers: dict[str, str], receive: Receive, limit: int) -> bytes:
    length = headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise EnrollError(413, "too_large", f"body is {length} bytes, limit {limit}")
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":  # the client went away
            raise EnrollError(400, "incomplete", "the request body did not arrive")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise EnrollError(413, "too_large", f"body exceeds {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def client_cert_der(scope: Scope) -> bytes | None:
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


async def _respond(
    send: Send, status: int, body: bytes, ctype: str, extra: list[tuple[bytes, bytes]]
) -> None:
    headers = [
        (b"content-type", ctype.encode()),
        (b"content-length", str(len(body)).encode()),
        *extra,
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _pkcs7(send: Send, certs: list[x509.Certificate]) -> None:
    body = _b64(certs_only(certs))
    await _respond(send, 200, body, PKCS7, [(b"content-transfer-encoding", b"base64")])


async def _refusal(send: Send, exc: EnrollError) -> None:
    extra = [(b"www-authenticate", b'Basic realm="est"')] if exc.status == 401 else []
    await _respond(send, exc.status, f"{exc.reason}: {exc.detail}\n".encode(), "text/plain", extra)


class EstApp:
    """The three EST routes as one ASGI app. Enrollment work (database, signing) runs in a
    small thread pool so that the event loop keeps doing TLS and HTTP meanwhile; fewer
    threads than the database pool holds connections (5), so none is opened per request."""

    ROUTES = {
        PREFIX + "/cacerts": "GET",
        PREFIX + "/simpleenroll": "POST",
        PREFIX + "/simplereenroll": "POST",
    }

    def __init__(
        self, ca: CertificateAuthority, enrollment: Enrollment, count: CountFn, threads: int = 4
    ) -> None:
        self.ca = ca
        self.enrollment = enrollment
        self.count = count
        self.limit = enrollment.settings.max_csr_bytes
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="est")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        path = scope["path"]
        method = self.ROUTES.get(path)
        if method is None:
            await _respond(send, 404, b"not_found: no such EST operation\n", "text/plain", [])
            return
        if scope["method"] != method:
            msg = f"method_not_allowed: use {method}\n".encode()
            await _respond(send, 405, msg, "text/plain", [(b"allow", method.encode())])
            return
        op = path.rsplit("/", 1)[1]
        if op == "cacerts":
            self.count(op, "ok")
            await _pkcs7(send, ca_certs(self.ca))
            return
        client = scope.get("client")
        source = str(client[0]) if client else "unknown"
        try:
            issued = await self._enroll(op, scope, receive, source)
        except EnrollError as exc:
            self.count(op, exc.reason)
            await _refusal(send, exc)
            return
        self.count(op, "ok")
        await _pkcs7(send, [issued.cert])

    async def _enroll(self, op: str, scope: Scope, receive: Receive, source: str) -> Issued:
        headers = _headers(scope)
        action = "est.enroll" if op == "simpleenroll" else "est.reenroll"
        loop = asyncio.get_running_loop()
        try:
            _check_type(headers)
            body = await _read_body(headers, receive, self.limit)
        except EnrollError as exc:
            await loop.run_in_executor(
                self.pool, self.enrollment.record_refusal, action, source, exc.reason
            )
            raise
        if op == "simpleenroll":
            token, claimed = token_from(headers.get("authorization", ""))
            return await loop.run_in_executor(
                self.pool, self.enrollment.enroll, token, body, source, claimed
            )
        der = client_cert_der(scope)
        return await loop.run_in_executor(self.pool, self.enrollment.reenroll, der, body, source)

    def close(self) -> None:
        self.pool.shutdown(wait=True)


def create_est_app(ca: CertificateAuthority, enrollment: Enrollment, count: CountFn) -> EstApp:
    return EstApp(ca, enrollment, count)


def _tls_extension(transport: asyncio.Transport, inner: Any) -> Any:
    """``inner`` wrapped to see the ASGI TLS extension of this connection."""
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

    async def with_tls(scope: Any, receive: Any, send: Any) -> None:
        scope.setdefault("extensions", {})["tls"] = tls
        await inner(scope, receive, send)

    return with_tls


class TLSH11Protocol(H11Protocol):
    """uvicorn's h11 protocol plus the ASGI TLS extension (the client certificate)."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.app = _tls_extension(transport, self.app)


class TLSHttpToolsProtocol(HttpToolsProtocol):
    """The same on uvicorn's httptools (C) parser, which the EST listener uses."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.app = _tls_extension(transport, self.app)


def est_config(
    app: Any,
    ca: CertificateAuthority,
    host: str,
    port: int,
    *,
    http: type[asyncio.Protocol] = TLSH11Protocol,
) -> uvicorn.Config:
    """uvicorn settings of a listener with the EST certificate: TLS, optional client
    certificate (verified against the CA bundle), the ASGI TLS extension.

    One TLS 1.3 session ticket per connection (OpenSSL's default is two), not none, though
    an enrolling device has no session to resume: the ticket is what the server sends right
    after the client's Finished, and it carries the TCP acknowledgement of that flight. With
    no ticket the server has nothing to send, the kernel delays its ACK (about 40 ms), and a
    client that does not set TCP_NODELAY (openssl s_client, many embedded TLS stacks) holds
    its request back under Nagle's algorithm until that ACK comes: enrollment fell from
    about 760/s to 330/s in the bench that way.
    """
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        http=http,
        ssl_certfile=str(ca.dir / "est.pem"),
        ssl_keyfile=str(ca.dir / "est.key"),
        ssl_ca_certs=str(ca.bundle_path),
        ssl_cert_reqs=ssl.CERT_OPTIONAL,
        log_level="warning",
        access_log=False,
        lifespan="off",
        backlog=1024,
        # TLS ends here (client certificates): no proxy in front whose X-Forwarded-For
        # could be believed, so the audit log's source is the peer's own address
        proxy_headers=False,
    )
    config.load()
    if config.ssl is not None:
        config.ssl.num_tickets = 1
    return config


class EstListener:
    """A TLS listener with the EST certificate in a thread of the fleet server process:
    the EST app when ``est_workers`` is 0, and other features' HTTPS apps (OTA)."""

    def __init__(
        self,
        app: Any,
        ca: CertificateAuthority,
        host: str,
        port: int,
        hosts: list[str],
        *,
        http: type[asyncio.Protocol] = TLSH11Protocol,
        grace_s: int | None = None,
    ) -> None:
        """``grace_s``: how long ``stop`` lets unfinished requests run (None: no limit)."""
        ensure_est_cert(ca, hosts)
        self.app = app
        config = est_config(app, ca, host, port, http=http)
        config.timeout_graceful_shutdown = grace_s
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
        log.info("TLS listener on https://%s:%d", self.host, self.port)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        if isinstance(self.app, EstApp):
            self.app.close()
