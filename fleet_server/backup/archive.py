"""The backup archive: one tar.gz of plain files under logical names (``db/...``,
``pki/...``, ``broker/...``, ``ota/repo/...``, ``ota/keys/...``) and ``MANIFEST.json``
last, which lists every file with its sha256, size and mode.

Writing goes to a temporary file beside the target (mode 0600: the archive holds keys),
fsynced and renamed: a crash leaves no half archive under the final name. Reading unpacks
into a fresh directory and accepts the archive only when it is whole: every member a plain
file with a safe relative name, the manifest present and valid, every listed file there
with its hash and size, nothing unlisted. A truncated archive has no manifest (it comes
last); a flipped byte breaks the gzip stream or a hash.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tarfile
import time
import zlib
from io import BytesIO
from pathlib import Path
from types import TracebackType
from typing import IO, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from common.files import sync_dir
from fleet_server.backup.errors import ArchiveError

MANIFEST = "MANIFEST.json"
FORMAT = 1
ARCHIVE_MODE = 0o600
_BLOCK = 1 << 20


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FileEntry(_Strict):
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="sha256 of the file's bytes")
    size: int = Field(ge=0, description="Size in bytes")
    mode: int = Field(ge=0, le=0o777, description="Permission bits to restore")


class DatabaseEntry(_Strict):
    kind: Literal["sqlite", "postgresql"] = Field(description="Database the dump came from")
    file: str = Field(description="Archive name of the dump (SQLite file or pg_dump archive)")
    revision: str | None = Field(description="Alembic schema revision of the snapshot")


class Manifest(_Strict):
    format: Literal[1] = Field(description="Archive format version")
    kind: Literal["camfleet-backup"] = Field(description="What this archive is")
    created: str = Field(description="When the backup was taken (UTC, ISO 8601)")
    camfleet: str = Field(description="camfleet version that wrote it")
    host: str = Field(description="Host name of the server it was taken on")
    database: DatabaseEntry = Field(description="The database snapshot")
    files: dict[str, FileEntry] = Field(description="Every file in the archive but this one")
    left_out: list[str] = Field(description="What was deliberately not backed up, and why")


def safe_name(name: str) -> bool:
    """A relative POSIX path with no empty, '.' or '..' part and no backslash."""
    if not name or name.startswith("/") or "\\" in name:
        return False
    return all(part not in ("", ".", "..") for part in name.split("/"))


class _Hashing:
    """A reader that hashes what passes through it (what tarfile copies into the archive)."""

    def __init__(self, f: IO[bytes]) -> None:
        self.f = f
        self.h = hashlib.sha256()
        self.n = 0

    def read(self, size: int = -1) -> bytes:
        data = self.f.read(size)
        self.h.update(data)
        self.n += len(data)
        return data


class ArchiveWriter:
    """``with ArchiveWriter(out) as w: w.add_file(...); w.finish(...)``; leaving the block
    without ``finish`` (an error) removes the temporary file."""

    def __init__(self, out: Path) -> None:
        self.out = Path(out)
        self.tmp = self.out.with_name(f".{self.out.name}.tmp-{os.getpid()}")
        self.files: dict[str, FileEntry] = {}
        fd = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, ARCHIVE_MODE)
        self._raw = os.fdopen(fd, "wb")
        # closed by finish(), or by __exit__ on an error
        self._tar = tarfile.open(fileobj=self._raw, mode="w:gz", compresslevel=6)  # noqa: SIM115
        self._done = False

    def __enter__(self) -> ArchiveWriter:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if not self._done:
            with contextlib.suppress(OSError, tarfile.TarError):
                self._tar.close()
            self._raw.close()
            self.tmp.unlink(missing_ok=True)

    @staticmethod
    def _info(name: str, size: int, mode: int) -> tarfile.TarInfo:
        info = tarfile.TarInfo(name)
        info.size, info.mode, info.mtime = size, mode, int(time.time())
        info.uname = info.gname = ""
        return info

    def add_file(self, name: str, src: Path) -> None:
        """Add ``src`` as ``name``: the bytes of the file as opened now (a file replaced
        meanwhile by an atomic rename is read whole, as it was)."""
        if not safe_name(name) or name == MANIFEST or name in self.files:
            raise ArchiveError(f"cannot add {name!r} to the archive")
        with open(src, "rb") as f:
            st = os.fstat(f.fileno())
            mode = st.st_mode & 0o777
            reader = _Hashing(f)
            self._tar.addfile(self._info(name, st.st_size, mode), reader)
        self.files[name] = FileEntry(sha256=reader.h.hexdigest(), size=reader.n, mode=mode)

    def finish(self, manifest: Manifest) -> Path:
        """Write the manifest (with the files added) last, then put the archive in place."""
        manifest = manifest.model_copy(update={"files": dict(sorted(self.files.items()))})
        data = json.dumps(manifest.model_dump(mode="json"), indent=1).encode() + b"\n"
        info = self._info(MANIFEST, len(data), 0o644)
        self._tar.addfile(info, BytesIO(data))
        self._tar.close()
        self._raw.flush()
        os.fsync(self._raw.fileno())
        self._raw.close()
        os.replace(self.tmp, self.out)
        sync_dir(self.out.parent)
        self._done = True
        return self.out


def _copy_member(src: IO[bytes], dest: Path) -> tuple[str, int]:
    h = hashlib.sha256()
    n = 0
    with open(dest, "xb") as out:
        for block in iter(lambda: src.read(_BLOCK), b""):
            h.update(block)
            n += len(block)
            out.write(block)
    return h.hexdigest(), n


def _unpack(archive: Path, dest: Path) -> dict[str, tuple[str, int]]:
    got: dict[str, tuple[str, int]] = {}
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar:
                name = member.name
                if not member.isfile() or not safe_name(name):
                    raise ArchiveError(f"{archive.name}: member {name!r} is not a plain file "
                                       "with a safe relative name")  # fmt: skip
                if name in got:
                    raise ArchiveError(f"{archive.name}: {name} is in it twice")
                f = tar.extractfile(member)
                if f is None:
                    raise ArchiveError(f"{archive.name}: cannot read {name}")
                target = dest / name
                target.parent.mkdir(parents=True, exist_ok=True)
                got[name] = _copy_member(f, target)
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        if isinstance(exc, ArchiveError):
            raise
        raise ArchiveError(f"{archive.name} is truncated or corrupt: {exc}") from exc
    return got


def _manifest(dest: Path, archive: Path) -> Manifest:
    path = dest / MANIFEST
    if not path.is_file():
        raise ArchiveError(f"{archive.name} has no {MANIFEST}: not a whole camfleet backup "
                           "(truncated?)")  # fmt: skip
    try:
        return Manifest.model_validate(json.loads(path.read_bytes()))
    except (ValueError, ValidationError) as exc:
        raise ArchiveError(f"{archive.name}: {MANIFEST} is not valid: {exc}") from exc


def unpack_verified(archive: Path, dest: Path) -> Manifest:
    """Unpack ``archive`` into the new directory ``dest`` and return its manifest, or raise
    ``ArchiveError`` (with ``dest`` removed) unless every file checks out."""
    archive = Path(archive)
    if not archive.is_file():
        raise ArchiveError(f"{archive} is not a file")
    dest.mkdir(mode=0o700)
    try:
        got = _unpack(archive, dest)
        manifest = _manifest(dest, archive)
        got.pop(MANIFEST)
        missing = sorted(manifest.files.keys() - got.keys())
        extra = sorted(got.keys() - manifest.files.keys())
        if missing or extra:
            raise ArchiveError(f"{archive.name} does not match its manifest: missing "
                               f"{missing[:5]}, unlisted {extra[:5]}")  # fmt: skip
        for name, entry in manifest.files.items():
            if got[name] != (entry.sha256, entry.size):
                raise ArchiveError(f"{archive.name}: {name} does not match its sha256 or size")
        if manifest.database.file not in manifest.files:
            raise ArchiveError(f"{archive.name}: the database dump {manifest.database.file} "
                               "is not in it")  # fmt: skip
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        raise
    return manifest
