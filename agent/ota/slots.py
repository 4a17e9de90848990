"""Release directories and the ``current`` link: the agent's application-level A/B.

Layout under a base directory B::

    B/releases/<release>/          one complete, unpacked release (a Python tree: agent/,
                                   common/, firmware/, ... ) with B/releases/<release>/.release
                                   (JSON: release, sha256 of the bundle) written last
    B/releases/.tmp-<release>-<n>/ an unpack in progress (discarded at start)
    B/current -> releases/<release>  switched by making a new link and renaming it over

A release directory without ``.release`` is half written and is removed by ``recover``;
``current`` is only ever switched to a complete release, so after a power cut at any
instant it names a complete release (the old one or the new one).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tarfile
from collections.abc import Callable
from pathlib import Path, PurePosixPath

from agent.ota.errors import BAD_BUNDLE, OtaError, SlotError
from common.files import atomic_write, sync_dir

log = logging.getLogger(__name__)

MARKER = ".release"
_TMP_PREFIX = ".tmp-"


def _fsync_tree(root: Path) -> None:
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            p = Path(dirpath) / name
            if p.is_symlink():
                continue
            fd = os.open(p, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        sync_dir(dirpath)


def valid_release_name(release: str) -> bool:
    return (
        0 < len(release) <= 64
        and release not in (".", "..")
        and not release.startswith(".")
        and all(c.isalnum() or c in ".-_+" for c in release)
    )


class AppSlots:
    def __init__(self, base: Path, required: str = "agent", marker_beside: bool = False) -> None:
        self.base = Path(base)
        self.required = required  # what a bundle must hold at its top (agent/, bundle.json)
        # models: the marker goes to B/complete/<release> (a model bundle lists every file
        # it holds, so nothing may be added inside it)
        self.marker_beside = marker_beside
        self.releases = self.base / "releases"
        self.current = self.base / "current"

    # ------------------------------------------------------------ reading
    def release_dir(self, release: str) -> Path:
        if not valid_release_name(release):
            raise SlotError(f"invalid release name {release!r}")
        return self.releases / release

    def marker_path(self, release: str) -> Path:
        if self.marker_beside:
            return self.base / "complete" / self.release_dir(release).name
        return self.release_dir(release) / MARKER

    def is_complete(self, release: str) -> bool:
        return self.release_dir(release).is_dir() and self.marker_path(release).is_file()

    def marker(self, release: str) -> dict[str, str]:
        try:
            data = json.loads(self.marker_path(release).read_text())
        except (OSError, ValueError) as exc:
            raise SlotError(f"release {release} has no readable marker: {exc}") from exc
        return {str(k): str(v) for k, v in dict(data).items()}

    def running(self) -> str | None:
        """The release ``current`` points to, or None when there is none."""
        try:
            target = os.readlink(self.current)
        except OSError:
            return None
        name = Path(target).name
        return name if valid_release_name(name) else None

    def current_path(self) -> Path:
        """The real directory of the running release (what a process is started from)."""
        release = self.running()
        if release is None or not self.is_complete(release):
            raise SlotError(f"{self.current} does not name a complete release")
        return self.release_dir(release)

    def installed(self) -> list[str]:
        if not self.releases.is_dir():
            return []
        return sorted(
            p.name
            for p in self.releases.iterdir()
            if valid_release_name(p.name) and self.is_complete(p.name)
        )

    # ------------------------------------------------------------ writing
    def install_bundle(
        self,
        bundle: Path,
        release: str,
        sha256: str,
        *,
        keep: str | None = None,
        midway: Callable[[], None] | None = None,
    ) -> Path:
        """Unpack a verified ``.tar.gz`` bundle into ``releases/<release>`` (atomically: a
        temp directory, fsync, marker, rename). An already complete copy of the same bundle
        is kept as it is. ``keep`` names a file in the release dir that gets a copy of the
        bundle (the base of a later delta); ``midway`` runs between unpack and marker (a
        test hook)."""
        final = self.release_dir(release)
        if final.exists():
            if self.is_complete(release) and self.marker(release).get("sha256") == sha256:
                return final
            if release == self.running():
                raise SlotError(f"release {release} runs now with other content")
            shutil.rmtree(final)
        self.releases.mkdir(parents=True, exist_ok=True)
        tmp = self.releases / f"{_TMP_PREFIX}{release}-{os.getpid()}"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        try:
            _unpack(bundle, tmp)
            root = _package_root(tmp, self.required)
            if root != tmp:  # the bundle has one top directory: keep its content only
                inner = tmp.with_name(tmp.name + "-in")
                root.rename(inner)
                shutil.rmtree(tmp)
                inner.rename(tmp)
            if keep is not None:
                shutil.copyfile(bundle, tmp / keep)
            if midway is not None:
                midway()
            marker = json.dumps({"release": release, "sha256": sha256}).encode()
            if self.marker_beside:
                self.marker_path(release).unlink(missing_ok=True)
            else:
                atomic_write(str(tmp / MARKER), marker)
            _fsync_tree(tmp)
            tmp.rename(final)
            sync_dir(str(self.releases))
            if self.marker_beside:  # after the rename: a crash before it leaves no marker
                self.marker_path(release).parent.mkdir(parents=True, exist_ok=True)
                atomic_write(str(self.marker_path(release)), marker)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        log.info("release %s unpacked into %s", release, final)
        return final

    def switch(self, release: str) -> None:
        """Point ``current`` at a complete release: new link, then rename over the old one."""
        if not self.is_complete(release):
            raise SlotError(f"release {release} is not completely installed")
        self.base.mkdir(parents=True, exist_ok=True)
        tmp = self.base / "current.tmp"
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        os.symlink(Path("releases") / release, tmp)
        os.replace(tmp, self.current)
        sync_dir(str(self.base))
        log.info("current -> %s", release)

    def recover(self, fallback: str | None = None) -> list[str]:
        """After a crash: remove unpacks in progress and release dirs without a marker, and
        make sure ``current`` names a complete release (``fallback``, else the newest
        complete one). Returns what was removed."""
        removed: list[str] = []
        with contextlib.suppress(FileNotFoundError):
            (self.base / "current.tmp").unlink()
        if self.releases.is_dir():
            for p in sorted(self.releases.iterdir()):
                if not valid_release_name(p.name) or not self.is_complete(p.name):
                    shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink()
                    removed.append(p.name)
        running = self.running()
        if running is None and not self.installed():
            return removed  # nothing installed yet (a model slot before its first model)
        if running is None or not self.is_complete(running):
            choices = [fallback] if fallback and self.is_complete(fallback) else self.installed()
            if not choices:
                raise SlotError(f"no complete release under {self.releases}")
            self.switch(choices[-1])
        if removed:
            log.warning("discarded half-written releases: %s", ", ".join(removed))
        return removed

    def prune(self, keep: set[str]) -> None:
        """Remove complete releases not in ``keep`` (never the running one)."""
        running = self.running()
        for release in self.installed():
            if release not in keep and release != running:
                self.remove(release)

    def remove(self, release: str) -> None:
        """Remove a release that does not run (marker first: never a marked half tree)."""
        if release == self.running():
            raise SlotError(f"release {release} runs now")
        self.marker_path(release).unlink(missing_ok=True)
        shutil.rmtree(self.release_dir(release), ignore_errors=True)


def _unpack(bundle: Path, dest: Path, *, stdlib_filter: bool | None = None) -> None:
    """Unpack with tarfile's "data" filter: no absolute paths, no escapes, no devices.

    Debian 12's Python (3.11.2, a box's) has no extraction filters (PEP 706 came in 3.11.4):
    there the same rules are checked member by member first (``safe_members``)."""
    if stdlib_filter is None:
        stdlib_filter = hasattr(tarfile, "data_filter")
    try:
        with tarfile.open(bundle, "r:gz") as tar:
            if stdlib_filter:
                tar.extractall(dest, filter="data")
            else:
                tar.extractall(dest, members=safe_members(tar))  # noqa: S202 (checked)
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise OtaError(BAD_BUNDLE, f"cannot unpack {bundle.name}: {exc}") from exc


def safe_members(tar: tarfile.TarFile) -> list[tarfile.TarInfo]:
    """The members, checked as the "data" filter does: files, directories and links that stay
    inside the destination; no owner taken from the archive, no set-id or others' write bits."""
    members = tar.getmembers()
    for m in members:
        parts = PurePosixPath(m.name).parts
        if m.name.startswith("/") or ".." in parts:
            raise tarfile.TarError(f"{m.name!r} points outside the destination")
        if m.issym() or m.islnk():
            target = (
                PurePosixPath(m.name).parent / m.linkname
                if m.issym()
                else PurePosixPath(m.linkname)
            )
            if m.linkname.startswith("/") or _escapes(target):
                raise tarfile.TarError(f"link {m.name!r} points outside the destination")
        elif not (m.isfile() or m.isdir()):
            raise tarfile.TarError(f"{m.name!r} is a special file")
        m.mode &= 0o755
        m.uid, m.gid, m.uname, m.gname = os.getuid(), os.getgid(), "", ""
    return members


def _escapes(path: PurePosixPath) -> bool:
    depth = 0
    for part in path.parts:
        depth += -1 if part == ".." else (0 if part == "." else 1)
        if depth < 0:
            return True
    return False


def _package_root(tmp: Path, required: str) -> Path:
    """Where the content is: ``tmp`` itself, or its single top directory."""
    if (tmp / required).exists():
        return tmp
    entries = list(tmp.iterdir())
    if len(entries) == 1 and entries[0].is_dir() and (entries[0] / required).exists():
        return entries[0]
    raise OtaError(BAD_BUNDLE, f"bundle holds no {required}")
