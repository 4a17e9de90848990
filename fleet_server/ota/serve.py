"""Serving the TUF repository read-only under ``/ota/``, with single-range Range requests.

``/ota/metadata/...`` and ``/ota/targets/...`` are the TUF metadata and target base URLs:
a device's ``tuf.ngclient.Updater`` (or the node's partial verifier) points at them.
Content integrity comes from TUF, not from the transport, so reading is public on the
REST API port; ``[ota] https_port`` adds an HTTPS listener with the server certificate the
EST listener uses, optionally requiring a fleet device certificate (docs/ota.md).

Only files below ``metadata/`` and ``targets/`` are served; ``..``, empty, dot-leading and
temporary (``*.tmp``, ``*.next``) names and anything resolving outside (symlinks) are
refused with 400 and counted. Responses carry ``Accept-Ranges: bytes`` and an ETag (the
sha256: for a target it is its content address). ``Range: bytes=a-b`` gives 206 with
``Content-Range``; a range past the end gives 416; ``If-Range`` with another ETag, a
multi-range or a malformed header gives the whole file (200), as RFC 9110 allows.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.responses import PlainTextResponse, StreamingResponse
from prometheus_client import CollectorRegistry, Counter

from fleet_server.identity.est import EstListener
from fleet_server.ota.published import RepoError
from fleet_server.ota.settings import OtaSettings, repo_dir_of
from fleet_server.ota.tufrepo import TufRepo

if TYPE_CHECKING:
    from fleet_server.features import ServerContext

log = logging.getLogger(__name__)

PREFIX = "/ota"
_SERVED_DIRS = ("metadata", "targets")
_CHUNK = 1 << 16
_RANGE_RE = re.compile(r"^bytes=(\d*)-(\d*)$")
_SHA_NAME_RE = re.compile(r"^([0-9a-f]{64})\.")


class BadPath(Exception):
    """A request path outside the served repository."""


class Unsatisfiable(Exception):
    """A Range that starts past the end of the file."""


@dataclass(frozen=True)
class ByteRange:
    start: int
    end: int  # inclusive

    @property
    def length(self) -> int:
        return self.end - self.start + 1


def parse_range(header: str | None, size: int) -> ByteRange | None:
    """The single byte range asked for, or None for the whole file.

    None for no header, a malformed one or several ranges (RFC 9110 lets a server ignore
    Range); Unsatisfiable when the range starts at or past ``size`` (or asks for a zero
    suffix).
    """
    if header is None:
        return None
    m = _RANGE_RE.match(header.strip())
    if m is None:
        return None
    first, last = m.group(1), m.group(2)
    if not first and not last:
        return None
    if not first:  # suffix: the last N bytes
        suffix = int(last)
        if suffix == 0 or size == 0:
            raise Unsatisfiable
        return ByteRange(max(0, size - suffix), size - 1)
    start = int(first)
    end = int(last) if last else size - 1
    if last and end < start:
        return None  # invalid: ignored
    if start >= size:
        raise Unsatisfiable
    return ByteRange(start, min(end, size - 1))


def resolve(repo_dir: Path, path: str) -> Path:
    """The file a request path names, or BadPath when it is not one we serve."""
    if "\\" in path or "\x00" in path:
        raise BadPath("backslash or NUL in path")
    parts = path.split("/")
    if len(parts) < 2 or parts[0] not in _SERVED_DIRS:
        raise BadPath("only metadata/ and targets/ are served")
    for part in parts:
        if part in ("", ".", "..") or part.startswith(".") or part.endswith((".tmp", ".next")):
            raise BadPath(f"path part {part!r} refused")
    base = (repo_dir / parts[0]).resolve()
    full = repo_dir.joinpath(*parts)
    if not full.resolve().is_relative_to(base):
        raise BadPath("path leaves the repository")
    return full


def content_type(path: Path) -> str:
    name = path.name
    if name.endswith(".json"):
        return "application/json"
    if name.endswith((".tar.gz", ".tgz")):
        return "application/gzip"
    return "application/octet-stream"


def etag_of(path: Path, f: BinaryIO) -> str:
    """The sha256 as an ETag: a target's content address, else the open file's hash."""
    m = _SHA_NAME_RE.match(path.name)
    if m is not None and path.parent.name != "metadata":
        return f'"{m.group(1)}"'
    h = hashlib.sha256()
    for chunk in iter(lambda: f.read(_CHUNK), b""):
        h.update(chunk)
    f.seek(0)
    return f'"{h.hexdigest()}"'


def _stream(f: BinaryIO, start: int, length: int) -> Iterator[bytes]:
    with f:
        f.seek(start)
        left = length
        while left > 0:
            chunk = f.read(min(_CHUNK, left))
            if not chunk:
                return
            left -= len(chunk)
            yield chunk


class OtaCounters:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "camfleet_ota_requests",
            "Requests to /ota/, by outcome",
            ["outcome"],
            registry=registry,
        )
        self.bytes = Counter("camfleet_ota_bytes", "Body bytes sent from /ota/", registry=registry)
        self.refreshes = Counter(
            "camfleet_ota_timestamp_refreshes",
            "Timestamp refreshes, by outcome",
            ["outcome"],
            registry=registry,
        )


def _routes(router: APIRouter, repo_dir: Path, counters: OtaCounters, need_cert: bool) -> None:
    @router.api_route(PREFIX + "/{path:path}", methods=["GET", "HEAD"], include_in_schema=False)
    def ota_file(path: str, request: Request) -> Response:
        if need_cert and not _client_cert(request):
            counters.requests.labels(outcome="no_client_cert").inc()
            return PlainTextResponse("forbidden: a fleet device certificate is required", 403)
        try:
            file = resolve(repo_dir, path)
        except BadPath as exc:
            counters.requests.labels(outcome="bad_path").inc()
            log.info("refused /ota/ path: %s", exc)
            return PlainTextResponse(f"bad_path: {exc}", 400)
        try:
            f = file.open("rb")  # one open file: a publish replacing it cannot mix versions
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            counters.requests.labels(outcome="not_found").inc()
            return PlainTextResponse("not_found", 404)
        try:
            return _respond(file, f, request, counters)
        except BaseException:
            f.close()
            raise


def _respond(file: Path, f: BinaryIO, request: Request, counters: OtaCounters) -> Response:
    """The response for an open repository file; closes ``f`` unless a body streams it."""
    size = os.fstat(f.fileno()).st_size
    etag = etag_of(file, f)
    headers = {
        "Accept-Ranges": "bytes",
        "ETag": etag,
        "Cache-Control": "no-cache" if file.name == "timestamp.json" else "public, max-age=300",
    }
    if_range = request.headers.get("if-range")
    try:
        rng = parse_range(request.headers.get("range"), size)
    except Unsatisfiable:
        f.close()
        counters.requests.labels(outcome="unsatisfiable").inc()
        headers["Content-Range"] = f"bytes */{size}"
        return PlainTextResponse("range_not_satisfiable", 416, headers=headers)
    if rng is not None and if_range is not None and if_range.strip() != etag:
        rng = None  # the file changed since the client's partial copy: send it whole
    start, length, status = (0, size, 200) if rng is None else (rng.start, rng.length, 206)
    if rng is not None:
        headers["Content-Range"] = f"bytes {rng.start}-{rng.end}/{size}"
    headers["Content-Length"] = str(length)
    counters.requests.labels(outcome="partial" if status == 206 else "ok").inc()
    kind = content_type(file)
    if request.method == "HEAD":
        f.close()
        return Response(status_code=status, headers=headers, media_type=kind)
    counters.bytes.inc(length)
    return StreamingResponse(
        _stream(f, start, length), status_code=status, headers=headers, media_type=kind
    )


def _client_cert(request: Request) -> bool:
    tls = request.scope.get("extensions", {}).get("tls", {})
    return bool(tls.get("client_cert_chain"))


class TimestampKeeper(threading.Thread):
    """Re-signs the timestamp (with the online keys) before it expires."""

    def __init__(self, repo: TufRepo, every_s: float, counters: OtaCounters) -> None:
        super().__init__(name="ota-timestamp", daemon=True)
        self.repo = repo
        self.every_s = every_s
        self.counters = counters
        self.stopped = threading.Event()

    def check(self) -> bool:
        """Refresh when due; True when it signed a new timestamp."""
        try:
            if not self.repo.refresh_due():
                return False
            self.repo.refresh_timestamp()
        except (RepoError, OSError, ValueError) as exc:
            self.counters.refreshes.labels(outcome="failed").inc()
            log.error("TUF timestamp refresh failed: %s", exc)
            return False
        self.counters.refreshes.labels(outcome="ok").inc()
        return True

    def run(self) -> None:
        self.check()
        while not self.stopped.wait(self.every_s):
            self.check()


def ota_app(repo_dir: Path, counters: OtaCounters, need_cert: bool) -> FastAPI:
    """The app of the devices' HTTPS listener: /ota/ only."""
    app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
    router = APIRouter()
    _routes(router, repo_dir, counters, need_cert)
    app.include_router(router)
    return app


def ota_router(ctx: ServerContext) -> APIRouter:
    """``/ota/`` on the REST API, plus the HTTPS listener and timestamp keeper when set."""
    settings: OtaSettings = ctx.settings.ota
    if not settings.enabled:
        return APIRouter()
    repo_dir = repo_dir_of(settings, ctx.settings.data_dir)
    counters = OtaCounters(ctx.metrics.registry)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        keeper: TimestampKeeper | None = None
        listener: EstListener | None = None
        if settings.keys_dir is not None:
            try:
                repo = TufRepo(repo_dir, settings.keys_dir)
            except RepoError as exc:
                log.error("no TUF timestamp refresh: %s", exc)
            else:
                keeper = TimestampKeeper(repo, settings.refresh_check_s, counters)
                keeper.start()
        if settings.https_port is not None:
            device_app = ota_app(repo_dir, counters, settings.require_client_cert)
            listener = EstListener(
                device_app, ctx.ca, settings.https_host, settings.https_port,
                ctx.settings.broker.hosts,
                grace_s=2,  # a download still streaming at stop is cut after this
            )  # fmt: skip
            listener.start()
            log.info("OTA repository on https://%s:%d%s/",
                     settings.https_host, settings.https_port, PREFIX)  # fmt: skip
        try:
            yield
        finally:
            if keeper is not None:
                keeper.stopped.set()
            if listener is not None:
                listener.stop()

    router = APIRouter(lifespan=lifespan)
    _routes(router, repo_dir, counters, need_cert=False)
    return router
