"""Build a firmware bundle (CPython only; the format is in firmware/bundle.py).

``build_bundle(src_tree, release, out)``: ``src_tree`` is a firmware source folder (with
manifest.py: its modules are compiled with mpy-cross, version.py first set to
``release``) or a deploy tree firmware.build already made (its ``*.mpy`` are packed as
they are, and its version.mpy must be of ``release``: checked by the reader on the node
through the heartbeat, not here). boot.py, main.py and startup.mpy stay out: they are the
board's fixed start-up code, never updated.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import tempfile
import zlib
from pathlib import Path

from firmware import bundle
from firmware.build import build

FIXED = ("startup.mpy",)  # the board's fixed start-up logic: never updated, never shadowed
_VERSION_LINE = re.compile(r'^VERSION = "[^"]*"$', re.M)


def stamp_source(src: Path, release: str, out: Path) -> Path:
    """A copy of the firmware source folder ``src`` in ``out`` with VERSION = release."""
    if not re.fullmatch(r"[0-9A-Za-z.+-]{1,40}", release):
        raise bundle.BundleError(f"release {release!r} is not a version string")
    shutil.copytree(src, out, ignore=shutil.ignore_patterns("__pycache__"))
    version = out / "version.py"
    text, n = _VERSION_LINE.subn(f'VERSION = "{release}"', version.read_text())
    if n != 1:
        raise bundle.BundleError(f"{version}: no VERSION line to set")
    version.write_text(text)
    return out


def pack(files: list[Path], release: str, out: Path) -> Path:
    """Write the bundle of ``files`` (names kept, no folders) to ``out`` atomically."""
    entries = []
    for f in files:
        data = f.read_bytes()
        entries.append([f.name, len(data), hashlib.sha256(data).hexdigest()])
    header = bundle.check_header({"format": bundle.FORMAT, "release": release, "files": entries})
    head = json.dumps(header, separators=(",", ":")).encode()
    comp = zlib.compressobj(9, zlib.DEFLATED, bundle.WBITS)
    body = [comp.compress(len(head).to_bytes(4, "big") + head)]
    body += [comp.compress(f.read_bytes()) for f in files]
    body.append(comp.flush())
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    with tmp.open("wb") as fh:
        fh.write(bundle.MAGIC)
        for part in body:
            fh.write(part)
        fh.flush()
        import os

        os.fsync(fh.fileno())
    tmp.replace(out)
    return out


def build_bundle(src_tree: Path, release: str, out: Path, sim: bool = False) -> Path:
    """The bundle of ``release`` (see the module docstring); returns ``out``."""
    src_tree = Path(src_tree)
    with tempfile.TemporaryDirectory(prefix="camfleet-bundle-") as tmp:
        if (src_tree / "manifest.py").is_file():
            source = stamp_source(src_tree, release, Path(tmp) / "src")
            built = Path(tmp) / "build"
            build(built, sim=sim, source=source)
        else:
            built = src_tree
        # the slot's completeness marker (startup.MARKER) goes last: present means all there
        files = sorted(
            (p for p in built.iterdir() if p.suffix == ".mpy" and p.name not in FIXED),
            key=lambda p: (p.name == "node.mpy", p.name),
        )
        if not files:
            raise bundle.BundleError(f"no .mpy files in {built}")
        return pack(files, release, Path(out))
