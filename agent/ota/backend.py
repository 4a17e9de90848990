"""The install backend: where a verified bundle goes and how the running release changes.

``InstallBackend`` is the one interface the updater uses. ``AppSlotsBackend`` keeps releases
as directories with a ``current`` link (agent.ota.slots); ``RaucBackend`` (agent.ota.rauc)
installs whole images through the ``rauc`` CLI; ``FakeBackend`` records calls for unit tests.
Backends are found by name through ``BACKENDS``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from agent.ota.crash import crash_point
from agent.ota.errors import SlotError
from agent.ota.slots import AppSlots

KEPT_BUNDLE = ".bundle.tar.gz"  # inside a release dir: the base of the next delta


class InstallBackend(Protocol):
    name: str

    def running(self) -> str | None:
        """The release that runs now (None when unknown)."""
        ...

    def install(self, bundle: Path, release: str, sha256: str) -> None:
        """Write the verified bundle into the inactive slot. The running one is untouched."""
        ...

    def activate(self, release: str) -> None:
        """Make ``release`` the one that runs after the next restart."""
        ...

    def mark_good(self, release: str, previous: str | None) -> None:
        """Commit: ``release`` stays, and ``previous`` for a later rollback; others go."""
        ...

    def rollback(self, previous: str) -> None:
        """Make ``previous`` run again after the next restart."""
        ...

    def kept_bundle(self, release: str) -> Path | None:
        """The bundle ``release`` was installed from (the base of a delta), if kept."""
        ...


class AppSlotsBackend:
    name = "slots"

    def __init__(self, base: Path) -> None:
        self.slots = AppSlots(base)

    def running(self) -> str | None:
        return self.slots.running()

    def install(self, bundle: Path, release: str, sha256: str) -> None:
        self.slots.install_bundle(bundle, release, sha256, keep=KEPT_BUNDLE, midway=_write_hook)

    def activate(self, release: str) -> None:
        self.slots.switch(release)

    def mark_good(self, release: str, previous: str | None) -> None:
        self.slots.prune({release} if previous is None else {release, previous})

    def rollback(self, previous: str) -> None:
        if not self.slots.is_complete(previous):
            raise SlotError(f"cannot roll back: release {previous} is not installed")
        self.slots.switch(previous)

    def kept_bundle(self, release: str) -> Path | None:
        path = self.slots.release_dir(release) / KEPT_BUNDLE
        return path if path.is_file() else None


def _write_hook() -> None:
    crash_point("write")  # the release half unpacked (the updater's kill test hook)


class FakeBackend:
    """In memory, for unit tests: records every call."""

    name = "fake"

    def __init__(self, running: str | None = "1.0.0") -> None:
        self.current = running
        self.slots: dict[str, str] = {} if running is None else {running: "factory"}
        self.calls: list[tuple[str, str]] = []

    def _call(self, what: str, arg: str) -> None:
        self.calls.append((what, arg))

    def running(self) -> str | None:
        return self.current

    def install(self, bundle: Path, release: str, sha256: str) -> None:
        self._call("install", release)
        self.slots[release] = sha256

    def activate(self, release: str) -> None:
        self._call("activate", release)
        if release not in self.slots:
            raise SlotError(f"release {release} not installed")
        self.current = release

    def mark_good(self, release: str, previous: str | None) -> None:
        self._call("mark_good", release)

    def rollback(self, previous: str) -> None:
        self._call("rollback", previous)
        self.current = previous

    def kept_bundle(self, release: str) -> Path | None:
        return None


def _rauc(base: Path) -> InstallBackend:
    from agent.ota.rauc import RaucBackend

    return RaucBackend()


BACKENDS: dict[str, Callable[[Path], InstallBackend]] = {
    "slots": AppSlotsBackend,
    "rauc": _rauc,
}


def make_backend(name: str, base: Path) -> InstallBackend:
    try:
        factory = BACKENDS[name]
    except KeyError as exc:
        raise SlotError(f"unknown install backend {name!r}") from exc
    return factory(base)
