"""Fetch a release through TUF over HTTPS: verified metadata, resumable target download,
delta when it matches the running release.

Metadata goes through ``tuf.ngclient.Updater`` (root pinned on the box, refresh, expiry,
signatures, rollback of versions). Targets are downloaded here, not by ngclient, so that a
dropped link resumes: bytes go to ``<download_dir>/<sha256>.part``, a later request asks
``Range: bytes=<size>-`` and appends. TUF's guarantees stay: nothing beyond the signed
length is ever written (an endless stream is cut there and refused as ``too_large``), and
the file is checked against the signed length and hashes (``TargetFile.
verify_length_and_hashes``) before anyone uses it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import urllib3
from tuf.api import exceptions as tuf_exc
from tuf.api.metadata import TargetFile
from tuf.ngclient import FetcherInterface, Updater

from agent.ota import errors as e
from agent.ota.delta import apply_delta
from common.bundle import delta_target

log = logging.getLogger(__name__)

_CHUNK = 64 * 1024
Progress = Callable[[int, int], None]  # (bytes so far, total)


@dataclass(frozen=True)
class FetchConfig:
    metadata_url: str  # https://host/ota/metadata/
    targets_url: str  # https://host/ota/targets/
    ca: Path | None  # PEM of the CA that signed the HTTPS server's certificate
    trusted_root: Path  # the pinned 1.root.json
    metadata_dir: Path  # ngclient's local metadata (root history etc.)
    download_dir: Path
    max_target_bytes: int
    timeout_s: float = 30.0
    retries: int = 5  # download attempts after a dropped link
    retry_base_s: float = 0.5


@dataclass(frozen=True)
class Target:
    """A verified target's signed facts."""

    path: str
    length: int
    sha256: str
    custom: dict[str, Any]

    @classmethod
    def of(cls, info: TargetFile) -> Target:
        custom = info.custom.get("camfleet") if isinstance(info.custom, dict) else None
        return cls(
            path=info.path,
            length=info.length,
            sha256=str(info.hashes.get("sha256", "")),
            custom=dict(custom) if isinstance(custom, dict) else {},
        )


def make_pool(ca: Path | None, timeout_s: float) -> urllib3.PoolManager:
    return urllib3.PoolManager(
        cert_reqs="CERT_REQUIRED",
        ca_certs=str(ca) if ca is not None else None,
        timeout=urllib3.Timeout(connect=timeout_s, read=timeout_s),
        retries=False,
    )


class PoolFetcher(FetcherInterface):
    """ngclient's metadata fetcher over our TLS pool (the fleet CA, no proxies)."""

    def __init__(self, pool: urllib3.PoolManager) -> None:
        self.pool = pool

    def _fetch(self, url: str) -> Iterator[bytes]:
        try:
            resp = self.pool.request("GET", url, preload_content=False)
        except urllib3.exceptions.HTTPError as exc:
            raise tuf_exc.DownloadError(f"{url}: {exc}") from exc
        if resp.status >= 400:
            # read the error body off the connection before it goes back to the pool, else
            # the next request on it reads that body as its status line
            resp.drain_conn()
            resp.release_conn()
            raise tuf_exc.DownloadHTTPError(f"HTTP {resp.status} for {url}", resp.status)
        return self._chunks(resp)

    @staticmethod
    def _chunks(resp: urllib3.BaseHTTPResponse) -> Iterator[bytes]:
        try:
            yield from resp.stream(_CHUNK)
        except urllib3.exceptions.HTTPError as exc:
            raise tuf_exc.DownloadError(str(exc)) from exc
        finally:
            resp.release_conn()


def translate(exc: Exception) -> e.OtaError:
    """python-tuf's errors as wire reasons."""
    if isinstance(exc, e.OtaError):
        return exc
    text = str(exc) or type(exc).__name__
    if isinstance(exc, tuf_exc.UnsignedMetadataError):
        return e.OtaError(e.BAD_SIGNATURE, text)
    if isinstance(exc, tuf_exc.ExpiredMetadataError):
        return e.OtaError(e.EXPIRED, text)
    if isinstance(exc, tuf_exc.LengthOrHashMismatchError):
        return e.OtaError(e.BAD_HASH, text)
    if isinstance(exc, tuf_exc.DownloadLengthMismatchError):
        return e.OtaError(e.TOO_LARGE, text)
    if isinstance(exc, tuf_exc.RepositoryError):
        return e.OtaError(e.BAD_METADATA, f"{type(exc).__name__}: {text}")
    if isinstance(exc, tuf_exc.DownloadError):
        return e.OtaError(e.DOWNLOAD, text)
    return e.OtaError(e.DOWNLOAD, f"{type(exc).__name__}: {text}")


class Fetcher:
    def __init__(self, config: FetchConfig) -> None:
        self.config = config
        self.pool = make_pool(config.ca, config.timeout_s)
        self._updater: Updater | None = None

    # ------------------------------------------------------------ metadata
    def refresh(self) -> None:
        """A fresh ngclient session: refresh root -> timestamp -> snapshot -> targets."""
        cfg = self.config
        cfg.metadata_dir.mkdir(parents=True, exist_ok=True)
        bootstrap: bytes | None = None
        if not (cfg.metadata_dir / "root.json").exists():
            try:
                bootstrap = cfg.trusted_root.read_bytes()
            except OSError as exc:
                raise e.OtaError(e.BAD_METADATA, f"no trusted root: {exc}") from exc
        try:
            updater = Updater(
                metadata_dir=str(cfg.metadata_dir),
                metadata_base_url=cfg.metadata_url,
                target_base_url=cfg.targets_url,
                fetcher=PoolFetcher(self.pool),
                bootstrap=bootstrap,
            )
            updater.refresh()
        except (tuf_exc.RepositoryError, tuf_exc.DownloadError, ValueError, OSError) as exc:
            raise translate(exc) from exc
        self._updater = updater

    def target(self, path: str) -> tuple[Target, TargetFile]:
        if self._updater is None:
            self.refresh()
        updater = self._updater
        if updater is None:
            raise e.OtaError(e.BAD_METADATA, "no metadata session")
        try:
            info = updater.get_targetinfo(path)
        except (tuf_exc.RepositoryError, tuf_exc.DownloadError) as exc:
            raise translate(exc) from exc
        if info is None:
            raise e.OtaError(e.UNKNOWN_TARGET, f"{path} is not in the signed targets")
        if info.length > self.config.max_target_bytes:
            raise e.OtaError(
                e.TOO_LARGE, f"{path} is {info.length} bytes > {self.config.max_target_bytes}"
            )
        return Target.of(info), info

    # ------------------------------------------------------------ targets
    def url_of(self, t: Target) -> str:
        dirname, sep, base = t.path.rpartition("/")
        return f"{self.config.targets_url.rstrip('/')}/{dirname}{sep}{t.sha256}.{base}"

    def part_path(self, t: Target) -> Path:
        return self.config.download_dir / f"{t.sha256}.part"

    def ok_path(self, t: Target) -> Path:
        """Where a verified target ends up."""
        return self.config.download_dir / f"{t.sha256}.ok"

    def download(self, t: Target, info: TargetFile, progress: Progress | None = None) -> Path:
        """The verified target file (``<sha256>.ok`` in the download dir)."""
        cfg = self.config
        cfg.download_dir.mkdir(parents=True, exist_ok=True)
        done = self.ok_path(t)
        if done.exists():
            return done
        part = self.part_path(t)
        url = self.url_of(t)
        last: Exception | None = None
        for attempt in range(cfg.retries + 1):
            if attempt:
                time.sleep(min(10.0, cfg.retry_base_s * 2 ** (attempt - 1)))
            if part.exists() and 0 < part.stat().st_size < t.length:
                log.info("resuming %s from byte %d", t.path, part.stat().st_size)
            try:
                self._get_into(url, part, t.length, progress)
                break
            except e.OtaError:
                part.unlink(missing_ok=True)
                raise
            except (urllib3.exceptions.HTTPError, OSError) as exc:
                last = exc
                have = part.stat().st_size if part.exists() else 0
                log.warning("download of %s dropped at %d bytes: %s", t.path, have, exc)
        else:
            raise e.OtaError(e.DOWNLOAD, f"{t.path}: gave up after {cfg.retries + 1} tries: {last}")
        return _verified(part, info, done, t.path)

    def _get_into(self, url: str, part: Path, length: int, progress: Progress | None) -> None:
        have = part.stat().st_size if part.exists() else 0
        if have > length:
            part.unlink()
            have = 0
        if have == length:
            return
        headers = {"Range": f"bytes={have}-"} if have else {}
        resp = self.pool.request("GET", url, headers=headers, preload_content=False)
        done = False
        try:
            if resp.status == 416:
                done = True
                return  # nothing beyond what we have: the hash check decides
            if resp.status == 200:
                have = 0
            elif resp.status == 206:
                start = _range_start(resp.headers.get("Content-Range", ""))
                if start != have:
                    raise urllib3.exceptions.ProtocolError(
                        f"asked for bytes from {have}, got {start}"
                    )
            else:
                raise e.OtaError(e.DOWNLOAD, f"HTTP {resp.status} for {url}")
            with part.open("ab" if have else "wb") as f:
                while chunk := resp.read1(_CHUNK):  # what arrived: kept even if the link drops
                    room = length - have
                    if len(chunk) > room:
                        f.write(chunk[:room])
                        f.flush()
                        raise e.OtaError(
                            e.TOO_LARGE, f"{url}: server sends more than the signed {length} bytes"
                        )
                    f.write(chunk)
                    have += len(chunk)
                    if progress is not None:
                        progress(have, length)
                f.flush()
                os.fsync(f.fileno())
            done = True
        finally:
            if done:
                resp.release_conn()
            else:
                resp.close()  # hang up: never read on from a server that sends too much

    # ------------------------------------------------------------ delta
    def fetch_bundle(
        self,
        full_path: str,
        running: str | None,
        running_bundle: Path | None,
        progress: Progress | None = None,
    ) -> tuple[Target, Path, bool]:
        """The full bundle (verified), from a delta when the repository has one from the
        running release and its result hashes as the full target. Returns (full target,
        file, whether a delta was used)."""
        full, full_info = self.target(full_path)
        if running is not None and running_bundle is not None and running_bundle.exists():
            try:
                out = self._via_delta(full, full_info, running, running_bundle, progress)
            except e.OtaError as exc:
                log.warning("delta from %s not used (%s); fetching the full bundle", running, exc)
            else:
                if out is not None:
                    return full, out, True
        return full, self.download(full, full_info, progress), False

    def _via_delta(
        self,
        full: Target,
        full_info: TargetFile,
        running: str,
        running_bundle: Path,
        progress: Progress | None,
    ) -> Path | None:
        release = str(full.custom.get("release", ""))
        artifact = str(full.custom.get("artifact", ""))
        if artifact != "agent" or not release:
            return None
        try:
            delta, delta_info = self.target(delta_target(running, release))
        except e.OtaError as exc:
            if exc.reason == e.UNKNOWN_TARGET:
                return None
            raise
        if delta.custom.get("delta_from") != running or delta.custom.get("full") not in (
            None,
            full.path,
        ):
            return None
        patch = self.download(delta, delta_info, progress)
        out = self.config.download_dir / f"{full.sha256}.delta-out"
        apply_delta(running_bundle, patch, out)
        return _verified(out, full_info, self.ok_path(full), "delta result")

    def clean(self) -> None:
        """Remove every download."""
        if not self.config.download_dir.is_dir():
            return
        for p in self.config.download_dir.iterdir():
            with contextlib.suppress(OSError):
                shutil.rmtree(p) if p.is_dir() else p.unlink()


def _verified(path: Path, info: TargetFile, done: Path, what: str) -> Path:
    """``path`` checked against the signed length and hashes, then renamed to ``done``; a
    mismatch removes it (``bad_hash``)."""
    try:
        with path.open("rb") as f:
            info.verify_length_and_hashes(f)
    except tuf_exc.LengthOrHashMismatchError as exc:
        path.unlink()
        raise e.OtaError(e.BAD_HASH, f"{what}: {exc}") from exc
    os.replace(path, done)
    return done


def _range_start(content_range: str) -> int:
    # "bytes 100-199/200"
    try:
        unit, _, rest = content_range.partition(" ")
        if unit != "bytes":
            raise ValueError(unit)
        return int(rest.split("-", 1)[0])
    except ValueError:
        return -1
