# A small HTTPS GET for the node's updates: one request per call, "Connection: close",
# an optional Range start (resume), the body streamed to a callback in small pieces and
# cut at a byte limit (an endless body is refused, never held). No redirects, no chunked
# transfer: a static host or the fleet server's /ota/ sends Content-Length.

import socket

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable

_CHUNK = 512
_HEAD_MAX = 4096


class FetchError(Exception):
    """The transfer failed (network, TLS, HTTP status, framing); ``limit`` when too long."""

    def __init__(self, detail: str, limit: bool = False) -> None:
        super().__init__(detail)
        self.limit = limit


def split_url(url: str) -> "tuple[str, int, str]":
    """(host, port, path) of an https:// URL."""
    if not url.startswith("https://"):
        raise FetchError("only https:// URLs: %r" % (url,))
    rest = url[8:]
    slash = rest.find("/")
    hostport, path = (rest, "/") if slash < 0 else (rest[:slash], rest[slash:])
    port = 443
    if ":" in hostport:
        hostport, text = hostport.rsplit(":", 1)
        try:
            port = int(text)
        except ValueError:
            raise FetchError("bad port in %r" % (url,))  # noqa: B904
    if not hostport:
        raise FetchError("no host in %r" % (url,))
    return hostport, port, path


def _connect(host: str, port: int, ctx: "Any", timeout_s: float) -> "Any":
    try:
        info = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)[0]
        sock = socket.socket(info[0], socket.SOCK_STREAM)
    except OSError as exc:
        raise FetchError("cannot resolve %s: %s" % (host, exc))  # noqa: B904
    try:
        sock.settimeout(timeout_s)
        sock.connect(info[-1])
        return ctx.wrap_socket(sock, server_hostname=host)
    except (OSError, ValueError) as exc:  # MicroPython reports TLS verify errors as ValueError
        sock.close()
        raise FetchError("cannot connect to %s:%d: %s" % (host, port, exc))  # noqa: B904


def _head(sock: "Any") -> "tuple[int, dict[str, str]]":
    """Status code and headers (names lowercased); leftover body bytes stay in sock."""
    lines: "list[str]" = []
    line = b""
    total = 0
    while True:
        ch = sock.read(1)
        if not ch:
            raise FetchError("connection closed in the response head")
        total += 1
        if total > _HEAD_MAX:
            raise FetchError("response head too long")
        if ch != b"\n":
            line += ch
            continue
        text = line.decode().rstrip("\r")
        line = b""
        if not text:
            break
        lines.append(text)
    if not lines:
        raise FetchError("empty response")
    parts = lines[0].split(" ")
    if len(parts) < 2 or not parts[0].startswith("HTTP/1."):
        raise FetchError("not an HTTP response: %r" % (lines[0][:40],))
    try:
        status = int(parts[1])
    except ValueError:
        raise FetchError("bad status line %r" % (lines[0][:40],))  # noqa: B904
    headers: "dict[str, str]" = {}
    for text in lines[1:]:
        colon = text.find(":")
        if colon > 0:
            headers[text[:colon].strip().lower()] = text[colon + 1 :].strip()
    return status, headers


def get(
    url: str,
    ctx: "Any",
    out: "Any",
    limit: int,
    start: int = 0,
    timeout_s: float = 10,
    feed: "Callable[[], Any] | None" = None,
) -> "tuple[int, int]":
    """GET ``url`` from byte ``start``; hands the body to ``out``: ``out.begin(first)``
    once the status is known, then ``out.write(piece)`` per piece.

    Returns (first byte of what was sent, bytes sent): the first is ``start`` when the
    server honoured the Range (206), 0 when it sent the whole (200; the caller then
    starts over). ``start`` + bytes never exceeds ``limit`` (FetchError with ``limit``).
    A 416 (nothing left after ``start``) returns (start, 0)."""
    host, port, path = split_url(url)
    sock = _connect(host, port, ctx, timeout_s)
    try:
        req = "GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n" % (path, host)
        if start:
            req += "Range: bytes=%d-\r\n" % start
        sock.write((req + "\r\n").encode())
        status, headers = _head(sock)
        if status == 416 and start:
            return start, 0
        if status == 206 and start:
            first = _range_start(headers.get("content-range", ""))
            if first != start:
                raise FetchError("asked from byte %d, got %r" % (start, first))
        elif status == 200:
            first = 0
        else:
            raise FetchError("HTTP %d for %s" % (status, path))
        if headers.get("transfer-encoding", "identity").lower() != "identity":
            raise FetchError("transfer-encoding %s not supported" % headers["transfer-encoding"])
        length = headers.get("content-length")
        want = int(length) if length is not None and length.isdigit() else -1
        if first + want > limit:
            raise FetchError("%d bytes from %d is over the limit %d" % (want, first, limit), True)
        out.begin(first)
        got = 0
        while want < 0 or got < want:
            piece = sock.read(_CHUNK)
            if not piece:
                break
            got += len(piece)
            if first + got > limit:
                raise FetchError("body goes past the limit %d" % limit, True)
            out.write(piece)
            if feed is not None:
                feed()
        if 0 <= want != got:
            raise FetchError("connection dropped after %d of %d bytes" % (got, want))
        return first, got
    except OSError as exc:
        raise FetchError("transfer failed: %s" % (exc,))  # noqa: B904
    finally:
        sock.close()


def _range_start(value: str) -> int:
    """The first byte of a Content-Range ``bytes a-b/n``; -1 when unreadable."""
    if not value.startswith("bytes "):
        return -1
    dash = value.find("-")
    try:
        return int(value[6:dash])
    except ValueError:
        return -1
