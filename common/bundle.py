"""Agent bundles as bytes: the one gzip form (reproducible, so a rebuilt bundle hashes like
the signed one), bounded inflating, and applying a bsdiff4 delta. The fleet server makes
bundles and deltas with these; the agent rebuilds a bundle from a delta with them. It lives
in ``common`` because an agent release carries the agent, common and firmware packages and
not the server's.
"""

from __future__ import annotations

import gzip
import io
from pathlib import Path

import bsdiff4

from firmware.fsutil import atomic_write

GZIP_LEVEL = 9
MAX_TAR = 512 * 1024 * 1024  # refuse to inflate anything larger (a gzip bomb)


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
