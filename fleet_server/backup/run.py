"""``backup``: one archive of a running fleet server's state; ``restore``: that state onto
a fresh server, with nothing changed unless the whole archive checks out.

A backup takes the database snapshot first, then asks the broker to write its persistence
file (SIGUSR1) and copies the files: the CA, the broker state, and the TUF repository and
online keys under the repository's writers' lock (no publish is half in the archive).
Files are written by the server atomically (rename), so each is read whole.

A restore unpacks and checks the archive completely first; then it refuses a target that
is not fresh (a CA, releases, keys, a broker persistence file, a database with tables);
then it loads the database (PostgreSQL: one transaction), puts every file in place
atomically with its mode, and writes the broker's config and ACL for this server's paths.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import logging
import os
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from common.files import sync_dir
from fleet_server.backup import database, state
from fleet_server.backup.archive import ArchiveWriter, DatabaseEntry, Manifest, unpack_verified
from fleet_server.backup.errors import BackupError, NotFreshError
from fleet_server.broker.conf import write_from_settings
from fleet_server.config import ServerSettings
from fleet_server.identity.ca import CertificateAuthority
from fleet_server.ota.tufrepo import writers_lock

log = logging.getLogger(__name__)

NAME_PREFIX = "camfleet-backup-"
NAME_SUFFIX = ".tar.gz"


@dataclass(frozen=True)
class BackupResult:
    path: Path
    size: int
    files: int
    database: DatabaseEntry
    left_out: list[str]


@dataclass(frozen=True)
class RestoreResult:
    manifest: Manifest
    restored: int
    not_placed: list[str]


def _version() -> str:
    try:
        return importlib.metadata.version("camfleet")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _broker_pid(settings: ServerSettings) -> int | None:
    pid_file = settings.identity.broker_pid_file or settings.broker_dir / "mosquitto.pid"
    try:
        pid = int(pid_file.read_text().strip())
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
    except (OSError, ValueError):
        return None
    return pid if comm.startswith("mosquitto") else None  # not a reused pid


def flush_broker(settings: ServerSettings, wait_s: float) -> bool:
    """Ask a running broker to write its persistence file now (SIGUSR1) and wait until it
    has; False when no broker runs here or it did not write within ``wait_s``."""
    pid = _broker_pid(settings)
    if pid is None:
        return False
    db = settings.broker_dir / "data" / "mosquitto.db"

    def stamp() -> int | None:
        try:
            return db.stat().st_mtime_ns
        except FileNotFoundError:
            return None

    before = stamp()
    os.kill(pid, signal.SIGUSR1)
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        now = stamp()
        if now is not None and now != before:
            return True
        time.sleep(0.05)
    log.warning("the broker did not write %s within %.0f s; the last one written is used",
                db, wait_s)  # fmt: skip
    return False


@contextlib.contextmanager
def _ota_lock(settings: ServerSettings, prefix: str) -> Iterator[None]:
    keys = settings.ota.keys_dir
    if prefix.startswith("ota/") and keys is not None and keys.is_dir():
        with writers_lock(keys):
            yield
    else:
        yield


def backup(
    settings: ServerSettings, out: Path, *, broker_wait_s: float = 5.0,
    clock: Callable[[], float] = time.time,
) -> BackupResult:  # fmt: skip
    """Write the archive of the server's state to ``out`` (atomically, mode 0600)."""
    out = Path(out)
    if not CertificateAuthority(settings.pki_dir).exists():
        raise BackupError(f"no CA in {settings.pki_dir}: nothing to back up",
                          "check --config; a new server needs `camfleet-server init`")  # fmt: skip
    if out.exists():
        raise BackupError(f"{out} exists already; a backup never overwrites one")
    left_out: list[str] = []
    with tempfile.TemporaryDirectory(prefix=".camfleet-backup-", dir=out.parent) as staging:
        entry, dump = database.snapshot(settings.db_url(), Path(staging))
        flush_broker(settings, broker_wait_s)
        with ArchiveWriter(out) as writer:
            writer.add_file(entry.file, dump)
            for part in state.parts(settings):
                with _ota_lock(settings, part.prefix):
                    for rel, path in part.files():
                        why = part.reason_to_skip(rel)
                        if why:
                            left_out.append(f"{part.prefix}/{rel}: {why}")
                            log.warning("not in the backup: %s/%s (%s)", part.prefix, rel, why)
                        if why is None:
                            writer.add_file(f"{part.prefix}/{rel}", path)
            manifest = Manifest(
                format=1, kind="camfleet-backup", camfleet=_version(),
                created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(clock())),
                host=socket.gethostname(), database=entry, files={}, left_out=left_out,
            )  # fmt: skip
            writer.finish(manifest)
            files = len(writer.files)
    log.info("backup %s: %d files, database %s", out, files, entry.kind)
    return BackupResult(out, out.stat().st_size, files, entry, left_out)


def backup_into(
    settings: ServerSettings, directory: Path, keep: int, clock: Callable[[], float] = time.time
) -> BackupResult:
    """A backup named by its UTC time in ``directory``; then only the newest ``keep``
    backups there are kept."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o750)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(clock()))
    result = backup(settings, directory / f"{NAME_PREFIX}{stamp}{NAME_SUFFIX}", clock=clock)
    old = sorted(directory.glob(f"{NAME_PREFIX}*{NAME_SUFFIX}"))[: -max(keep, 1)]
    for path in old:
        path.unlink()
        log.info("removed the old backup %s", path)
    return result


def _place(src: Path, dest: Path, mode: int, dir_mode: int, root: Path) -> None:
    """Copy ``src`` to ``dest`` atomically (temp file, fsync, rename) with ``mode``."""
    root.mkdir(parents=True, exist_ok=True, mode=dir_mode)
    dest.parent.mkdir(parents=True, exist_ok=True, mode=dir_mode)
    tmp = dest.with_name(f".{dest.name}.restore-{os.getpid()}")
    with open(src, "rb") as fin, open(tmp, "wb") as fout:
        shutil.copyfileobj(fin, fout, 1 << 20)
        os.fchmod(fout.fileno(), mode)
        fout.flush()
        os.fsync(fout.fileno())
    os.replace(tmp, dest)
    sync_dir(dest.parent)


def check_archive(archive: Path) -> Manifest:
    """Unpack and check the whole archive (into a temporary directory), change nothing."""
    with tempfile.TemporaryDirectory(prefix="camfleet-restore-check-") as tmp:
        return unpack_verified(Path(archive), Path(tmp) / "x")


def restore(settings: ServerSettings, archive: Path) -> RestoreResult:
    """Restore ``archive`` onto this (fresh) server's state directory and database."""
    settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o750)
    staging = settings.data_dir / f".restore-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    manifest = unpack_verified(Path(archive), staging)  # a bad archive: nothing changed
    try:
        found = state.state_found(settings)
        if found:
            raise NotFreshError(f"this server is not fresh: {'; '.join(found)}",
                                "restore onto a new state directory and an empty database; "
                                "do not run `camfleet-server init` before a restore")  # fmt: skip
        database.check_empty(settings.db_url())
        database.load(settings.db_url(), manifest.database, staging / manifest.database.file)
        parts = state.parts(settings)
        restored, not_placed = 0, []
        for name, entry in manifest.files.items():
            if name == manifest.database.file:
                continue
            hit = state.part_of(name, parts)
            if hit is None:  # e.g. online keys, with no [ota] keys_dir on this server
                not_placed.append(name)
                continue
            part, rel = hit
            _place(staging / name, part.path / rel, entry.mode, part.mode, part.path)
            restored += 1
        write_from_settings(CertificateAuthority(settings.pki_dir), settings)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if not_placed:
        log.warning("not restored (no place for them in this server's settings): %s",
                    ", ".join(not_placed))  # fmt: skip
    return RestoreResult(manifest, restored, not_placed)
