"""Agent bundles as bytes: the one gzip form (reproducible, so a rebuilt bundle hashes like
the signed one), bounded inflating, the MANIFEST.json check, the delta target's name and
applying a bsdiff4 delta. The fleet server makes bundles and deltas with these; the agent
checks a bundle and rebuilds one from a delta with them. It lives in ``common`` because an
agent release carries the agent, common and firmware packages and not the server's.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from pathlib import Path
from typing import Any

import bsdiff4

from common.files import atomic_write

GZIP_LEVEL = 9
MAX_TAR = 512 * 1024 * 1024  # refuse to inflate anything larger (a gzip bomb)
MANIFEST = "MANIFEST.json"  # in a bundle: {"release": ..., "files": {name: sha256}}


class BundleError(ValueError):
    """Not a bundle, too large inflated, or a delta that does not apply."""


def gzip_fixed(data: bytes) -> bytes:
    """gzip with no file name, mtime 0 and a fixed level (reproducible on one zlib)."""
    out = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=out, compresslevel=GZIP_LEVEL, mtime=0) as g:
        g.write(data)
    return out.getvalue()


def gunzip_bounded(path: Path, limit: int = MAX_TAR) -> bytes:
    """The uncompressed bytes of a .tar.gz, refused past ``limit``."""
    try:
        with gzip.open(path, "rb") as g:
            data = g.read(limit + 1)
    except (OSError, EOFError) as exc:
        raise BundleError(f"{Path(path).name} is not a valid gzip file: {exc}") from exc
    if len(data) > limit:
        raise BundleError(f"{Path(path).name} inflates beyond {limit} bytes")
    return data


def read_manifest(path: Path) -> dict[str, Any]:
    """The MANIFEST.json of a bundle, after checking that it lists exactly the bundle's
    files, each with its sha256."""
    name = Path(path).name
    data = gunzip_bounded(path)
    blobs: dict[str, bytes] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            for member in tar.getmembers():
                f = tar.extractfile(member) if member.isfile() else None
                if f is not None:
                    blobs[member.name] = f.read()
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise BundleError(f"{name} is not a valid tar: {exc}") from exc
    try:
        manifest = json.loads(blobs.pop(MANIFEST))
        listed = dict(manifest["files"])
    except (KeyError, ValueError, TypeError) as exc:
        raise BundleError(f"{name} has no valid {MANIFEST}: {exc}") from exc
    if set(listed) != set(blobs):
        raise BundleError(f"{name}: {MANIFEST} does not list exactly the bundle's files")
    for member_name, digest in listed.items():
        if hashlib.sha256(blobs[member_name]).hexdigest() != digest:
            raise BundleError(f"{name}: {member_name} does not match its manifest hash")
    return dict(manifest)


def delta_target(from_release: str, to_release: str) -> str:
    """The TUF target path of the agent delta between two releases."""
    return f"agent/delta/camfleet-agent-{from_release}-to-{to_release}.bsdiff"


def apply_delta(old: Path, patch: Path, out: Path) -> Path:
    """Rebuild the full bundle from bundle ``old`` and a bsdiff4 delta between the two
    uncompressed tars, written atomically to ``out``. The caller checks ``out`` against the
    signed full target before anything uses it."""
    try:
        new_tar = bsdiff4.patch(gunzip_bounded(Path(old)), Path(patch).read_bytes())
    except (ValueError, RuntimeError, OSError) as exc:
        if isinstance(exc, BundleError):
            raise
        raise BundleError(f"delta {Path(patch).name} does not apply: {exc}") from exc
    atomic_write(str(out), gzip_fixed(new_tar))
    return Path(out)
