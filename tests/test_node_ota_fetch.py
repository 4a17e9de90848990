"""firmware/fetch.py (the node's HTTPS GET) against small real TLS servers that misbehave:
an endless body is cut at the signed length, a Range answered with another start is
refused, a 416 means nothing is left, a 200 to a Range request starts over. The same
code runs on the node (tests/test_node_ota.py drives it there through a cut transfer)."""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from firmware import fetch
from fleet_server.identity.ca import CertificateAuthority
from fleet_server.identity.ca_ops import EST_KEY, ensure_est_cert


class _Sink:
    def __init__(self) -> None:
        self.first = -1
        self.data = b""

    def begin(self, first: int) -> None:
        self.first = first

    def write(self, piece: bytes) -> None:
        self.data += piece


class _Server:
    """One TLS listener; each connection reads a request and gets ``answer(request)``:
    bytes, or an iterator of bytes sent until the client goes away."""

    def __init__(self, ca: CertificateAuthority, answer: object) -> None:
        self.answer = answer
        self.requests: list[str] = []
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        cert = ensure_est_cert(ca, ["localhost"])  # the fleet server's HTTPS certificate
        ctx.load_cert_chain(str(cert), str(ca.dir / EST_KEY))
        self.ctx = ctx
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                raw, _ = self.sock.accept()
            except OSError:
                return
            with contextlib.suppress(OSError, ssl.SSLError):
                conn = self.ctx.wrap_socket(raw, server_side=True)
                req = b""
                while b"\r\n\r\n" not in req:
                    part = conn.recv(1024)
                    if not part:
                        break
                    req += part
                self.requests.append(req.decode())
                out = self.answer(req.decode())  # type: ignore[operator]
                if isinstance(out, bytes):
                    conn.sendall(out)
                else:
                    for piece in out:
                        conn.sendall(piece)
                conn.close()

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def client_ctx(ca: CertificateAuthority) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca.root_cert_path))
    return ctx


@pytest.fixture
def serve(ca: CertificateAuthority) -> Iterator[list[_Server]]:
    made: list[_Server] = []
    yield made
    for s in made:
        s.close()


def _endless(_req: str) -> Iterator[bytes]:
    yield b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n\r\n"
    for _ in range(10_000):  # bounded: 40 MB at most, the client stops long before
        yield b"x" * 4096


def test_endless_body_is_cut_at_the_limit(
    ca: CertificateAuthority, client_ctx: ssl.SSLContext, serve: list[_Server]
) -> None:
    srv = _Server(ca, _endless)
    serve.append(srv)
    sink = _Sink()
    with pytest.raises(fetch.FetchError) as err:
        fetch.get(f"https://localhost:{srv.port}/ota/x", client_ctx, sink, 10_000)
    assert err.value.limit
    assert len(sink.data) <= 10_000


def test_declared_length_over_the_limit_is_refused_before_reading(
    ca: CertificateAuthority, client_ctx: ssl.SSLContext, serve: list[_Server]
) -> None:
    srv = _Server(ca, lambda _r: b"HTTP/1.1 200 OK\r\nContent-Length: 20000\r\n\r\n" + b"y" * 100)
    serve.append(srv)
    sink = _Sink()
    with pytest.raises(fetch.FetchError) as err:
        fetch.get(f"https://localhost:{srv.port}/a", client_ctx, sink, 10_000)
    assert err.value.limit and sink.data == b""


def test_range_answers(
    ca: CertificateAuthority, client_ctx: ssl.SSLContext, serve: list[_Server]
) -> None:
    body = bytes(range(256)) * 4

    def answer(req: str) -> bytes:
        if "Range: bytes=100-" in req:
            part = body[100:]
            head = f"HTTP/1.1 206 Partial Content\r\nContent-Length: {len(part)}\r\n"
            return (head + "Content-Range: bytes 100-1023/1024\r\n\r\n").encode() + part
        if "Range: bytes=200-" in req:  # a server that answers another range
            part = body[50:]
            head = f"HTTP/1.1 206 Partial Content\r\nContent-Length: {len(part)}\r\n"
            return (head + "Content-Range: bytes 50-1023/1024\r\n\r\n").encode() + part
        if "Range: bytes=1024-" in req:
            return b"HTTP/1.1 416 Range Not Satisfiable\r\nContent-Length: 0\r\n\r\n"
        if "Range: bytes=300-" in req:  # ignores the Range: the whole file
            return f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body
        return b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"

    srv = _Server(ca, answer)
    serve.append(srv)
    url = f"https://localhost:{srv.port}/ota/targets/f"
    sink = _Sink()
    assert fetch.get(url, client_ctx, sink, 1024, start=100) == (100, 924)
    assert sink.first == 100 and sink.data == body[100:]
    with pytest.raises(fetch.FetchError, match="asked from byte 200"):
        fetch.get(url, client_ctx, _Sink(), 1024, start=200)
    assert fetch.get(url, client_ctx, _Sink(), 1024, start=1024) == (1024, 0)
    sink = _Sink()
    assert fetch.get(url, client_ctx, sink, 1024, start=300) == (0, 1024)
    assert sink.first == 0 and sink.data == body  # the caller starts its file over
    with pytest.raises(fetch.FetchError, match="HTTP 404"):
        fetch.get(url, client_ctx, _Sink(), 1024)
    assert all(r.startswith("GET /ota/targets/f HTTP/1.1\r\n") for r in srv.requests)


def test_a_server_the_root_did_not_sign_is_refused(
    ca: CertificateAuthority, serve: list[_Server], tmp_path: Path
) -> None:
    srv = _Server(ca, lambda _r: b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    serve.append(srv)
    other = CertificateAuthority(tmp_path / "other-pki")
    other.init()
    ctx = ssl.create_default_context(cafile=str(other.root_cert_path))
    with pytest.raises(fetch.FetchError, match="cannot connect"):
        fetch.get(f"https://localhost:{srv.port}/a", ctx, _Sink(), 100)
