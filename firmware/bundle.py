# The firmware bundle: the node's application (.mpy modules) in one file.
#
#   MAGIC (6 bytes, "CFNB1\n"), then one zlib stream (window 2**10, so a board inflates
#   it with a 1 KiB window) holding:
#     4 bytes big-endian n, then n bytes of JSON: {"format": 1, "release": "0.3.0",
#       "files": [["node.mpy", size, "<sha256 hex>"], ...]}
#     the files' bytes, one after the other, in that order
#
# The node reads it as a stream (MicroPython's ``deflate.DeflateIO``; CPython's zlib in
# tests) and writes each file into the slot directory through a temp file, fsync and
# rename, checking every file's size and sha256 against the header. The bundle as a whole
# is checked before (length and sha256 signed in TUF targets metadata); the per-file
# checks catch a bundle built wrong. ``build_bundle`` (CPython) is in bundle_build.py.

import hashlib
import json
import os

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

MAGIC = b"CFNB1\n"
FORMAT = 1
WBITS = 10  # deflate window 1 KiB: what a small board can spare
HEADER_MAX = 8192
_CHUNK = 512
_NAME_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789_"


class BundleError(Exception):
    """Not a bundle this node can install (bad form, file name, size or hash)."""


def valid_name(name: object) -> bool:
    """A module file of the slot: lowercase name, ``.mpy`` or ``.py``, no path."""
    if not isinstance(name, str):
        return False
    stem = name[:-4] if name.endswith(".mpy") else name[:-3] if name.endswith(".py") else ""
    if not stem or len(name) > 40:
        return False
    return all(ch in _NAME_CHARS for ch in stem)


def check_header(header: object) -> "dict[str, Any]":
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise BundleError("not a format %d bundle header" % FORMAT)
    if not isinstance(header.get("release"), str) or not header["release"]:
        raise BundleError("bundle has no release")
    files = header.get("files")
    if not isinstance(files, list) or not files:
        raise BundleError("bundle lists no files")
    seen = []
    for entry in files:
        if not isinstance(entry, list) or len(entry) != 3:
            raise BundleError("bad file entry %r" % (entry,))
        name, size, digest = entry
        if not valid_name(name) or name in seen:
            raise BundleError("bad or repeated file name %r" % (name,))
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise BundleError("bad size for %s" % (name,))
        if not isinstance(digest, str) or len(digest) != 64:
            raise BundleError("bad sha256 for %s" % (name,))
        seen.append(name)
    return header


def _inflater(f: "Any") -> "Any":
    """A readable stream of the inflated zlib data that follows in ``f``."""
    try:
        import deflate  # MicroPython

        return deflate.DeflateIO(f, deflate.ZLIB)
    except ImportError:
        import zlib  # pyright: ignore[reportMissingImports] - CPython

        class _Reader:
            def __init__(self) -> None:
                self.z = zlib.decompressobj()
                self.buf = b""

            def read(self, n: int) -> bytes:
                while len(self.buf) < n:
                    raw = f.read(_CHUNK)
                    if not raw:
                        self.buf += self.z.flush()
                        break
                    self.buf += self.z.decompress(raw)
                out, self.buf = self.buf[:n], self.buf[n:]
                return out

        return _Reader()


def _read_exact(stream: "Any", n: int) -> bytes:
    parts = []
    left = n
    while left > 0:
        part = stream.read(left if left < _CHUNK else _CHUNK)
        if not part:
            raise BundleError("bundle ends early")
        parts.append(part)
        left -= len(part)
    return b"".join(parts)


def _open(f: "Any") -> "tuple[Any, dict[str, Any]]":
    if f.read(len(MAGIC)) != MAGIC:
        raise BundleError("not a camfleet node bundle")
    stream = _inflater(f)
    try:
        size = int.from_bytes(_read_exact(stream, 4), "big")
        if size > HEADER_MAX:
            raise BundleError("bundle header of %d bytes is too large" % size)
        header = json.loads(_read_exact(stream, size))
    except ValueError as exc:  # bad JSON; zlib errors are OSError / zlib.error
        raise BundleError("bundle header unreadable: %s" % (exc,))  # noqa: B904
    return stream, check_header(header)


def read_header(path: str) -> "dict[str, Any]":
    """The header of the bundle at ``path`` (release and file list)."""
    with open(path, "rb") as f:
        return _open(f)[1]


def _clear(directory: str) -> None:
    try:
        names = os.listdir(directory)
    except OSError:
        os.mkdir(directory)
        return
    for name in names:
        os.remove(directory + "/" + name)


def unpack(path: str, directory: str) -> "dict[str, Any]":
    """Write every file of the bundle at ``path`` into ``directory`` (emptied first).

    Returns the header. Each file goes through a temp file, fsync and rename; a size or
    hash that differs from the header raises BundleError (the slot is then incomplete,
    and the caller must not select it)."""
    _clear(directory)
    with open(path, "rb") as f:
        try:
            stream, header = _open(f)
            for name, size, digest in header["files"]:
                _write_file(stream, directory + "/" + name, size, digest)
            if stream.read(1):
                raise BundleError("data after the last file")
        except (OSError, EOFError) as exc:  # inflate errors on MicroPython
            raise BundleError("bundle data unreadable: %s" % (exc,))  # noqa: B904
        except Exception as exc:
            if type(exc).__name__ == "error":  # zlib.error under CPython
                raise BundleError("bundle data unreadable: %s" % (exc,))  # noqa: B904
            raise
    return header


def _write_file(stream: "Any", target: str, size: int, digest: str) -> None:
    tmp = target + ".tmp"
    h = hashlib.sha256()
    with open(tmp, "wb") as out:
        left = size
        while left > 0:
            part = stream.read(left if left < _CHUNK else _CHUNK)
            if not part:
                raise BundleError("bundle ends inside %s" % (target,))
            h.update(part)
            out.write(part)
            left -= len(part)
        sync_file(out)
    if hex_digest(h) != digest:
        os.remove(tmp)
        raise BundleError("%s does not match its sha256" % (target,))
    os.rename(tmp, target)  # replaces: littlefs and POSIX rename over a file


def sync_file(f: "Any") -> None:
    """Flush an open file and fsync it where the port has fsync (also install.py's)."""
    f.flush()
    fsync = getattr(os, "fsync", None)
    if fsync is not None:
        fsync(f.fileno())


def hex_digest(h: "Any") -> str:
    return "".join("%02x" % b for b in h.digest())
