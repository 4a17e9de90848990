"""Apply an agent bundle delta on the box.

Same semantics as ``fleet_server.ota.release.apply_delta`` (which makes the patches): a
bsdiff4 patch between the *uncompressed* tars, the result gzip'd with no file name, mtime 0
and level 9 so it hashes like the full bundle. It lives here because an agent release holds
only the agent, common and firmware packages; the caller checks the result against the
signed full target before anything uses it.
"""

from __future__ import annotations

import gzip
import io
from pathlib import Path

import bsdiff4

from agent.ota.errors import BAD_BUNDLE, OtaError
from firmware.fsutil import atomic_write

GZIP_LEVEL = 9
MAX_TAR = 512 * 1024 * 1024  # refuse to inflate anything larger (a gzip bomb)


def gunzip_bounded(path: Path, limit: int = MAX_TAR) -> bytes:
    try:
        with gzip.open(path, "rb") as g:
            data = g.read(limit + 1)
    except (OSError, EOFError) as exc:
        raise OtaError(BAD_BUNDLE, f"{path.name} is not a valid gzip file: {exc}") from exc
    if len(data) > limit:
        raise OtaError(BAD_BUNDLE, f"{path.name} inflates beyond {limit} bytes")
    return data


def gzip_fixed(data: bytes) -> bytes:
    out = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=out, compresslevel=GZIP_LEVEL, mtime=0) as g:
        g.write(data)
    return out.getvalue()


def apply_delta(old: Path, patch: Path, out: Path) -> Path:
    """The full bundle rebuilt from the running bundle ``old`` and a delta, written
    atomically to ``out``."""
    try:
        new_tar = bsdiff4.patch(gunzip_bounded(Path(old)), Path(patch).read_bytes())
    except (ValueError, RuntimeError, OSError) as exc:
        raise OtaError(BAD_BUNDLE, f"delta {Path(patch).name} does not apply: {exc}") from exc
    atomic_write(str(out), gzip_fixed(new_tar))
    return Path(out)
