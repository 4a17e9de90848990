"""What a TUF repository directory publishes, read without keys: its layout, the target
entries, and the signed metadata (timestamp -> snapshot -> targets) as the server serves it.

Layout of a repository directory R (servable by any static HTTP host; see docs/ota.md):

    R/metadata/<N>.root.json, <N>.targets.json, <N>.snapshot.json, timestamp.json
    R/targets/<dir>/<sha256>.<basename>     (consistent snapshots: content-addressed)
    R/staged.json                           (targets added but not yet published; not served)

Signatures are not checked here: the server trusts its own disk, devices verify them. The
signing side (keys, publish, rotate) is ``fleet_server.ota.tufrepo``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from tuf.api.metadata import Metadata, Root, Snapshot, TargetFile, Targets, Timestamp
from tuf.api.serialization import DeserializationError

CHUNK = 1 << 16  # bytes read or copied at a time

_S = TypeVar("_S", Root, Timestamp, Snapshot, Targets)


class RepoError(Exception):
    """A repository operation that cannot be done; the message says why."""


@dataclass(frozen=True)
class TargetEntry:
    """One target as listed: its path, length, sha256, custom data and whether published."""

    path: str
    length: int
    sha256: str
    custom: dict[str, Any]
    published: bool

    @classmethod
    def of(cls, t: TargetFile, *, published: bool) -> TargetEntry:
        custom = t.unrecognized_fields.get("custom", {})
        return cls(t.path, t.length, t.hashes["sha256"], dict(custom), published)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def target_file_path(repo_dir: Path, target_path: str, sha256: str) -> Path:
    """Where a target's bytes live: ``R/targets/<dir>/<sha256>.<basename>``.

    This is the URL python-tuf's ngclient asks for with consistent snapshots.
    """
    dirname, _, basename = target_path.rpartition("/")
    return repo_dir / "targets" / dirname / f"{sha256}.{basename}"


def check_target_path(path: str) -> None:
    parts = path.split("/")
    if not path or path.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise RepoError(f"bad target path {path!r}: relative, no empty, '.' or '..' parts")


class PublishedRepo:
    """What a TUF repository directory publishes, read without keys (signatures are not
    checked: the server trusts its own disk, devices verify them)."""

    def __init__(self, repo_dir: Path) -> None:
        self.repo_dir = Path(repo_dir)
        self.metadata_dir = self.repo_dir / "metadata"
        if not (self.metadata_dir / "1.root.json").is_file():
            raise RepoError(f"no TUF repository in {self.repo_dir} (run 'release init')")

    def root(self) -> Metadata[Root]:
        return self._load(f"{self.root_version()}.root.json", Root)

    def root_version(self) -> int:
        versions = [
            int(p.name.split(".")[0])
            for p in self.metadata_dir.glob("*.root.json")
            if p.name.split(".")[0].isdigit()
        ]
        return max(versions)

    def timestamp(self) -> Metadata[Timestamp]:
        return self._load("timestamp.json", Timestamp)

    def snapshot(self) -> Metadata[Snapshot]:
        return self._load(
            f"{self.timestamp().signed.snapshot_meta.version}.snapshot.json", Snapshot
        )

    def targets(self) -> Metadata[Targets]:
        return self._load(
            f"{self.snapshot().signed.meta['targets.json'].version}.targets.json", Targets
        )

    def target_info(self, path: str) -> TargetEntry | None:
        """A published target by path, or None."""
        t = self.targets().signed.targets.get(path)
        return None if t is None else TargetEntry.of(t, published=True)

    def _load(self, name: str, kind: type[_S]) -> Metadata[_S]:
        path = self.metadata_dir / name
        try:
            md = Metadata.from_file(str(path))
        except FileNotFoundError as exc:
            raise RepoError(f"missing metadata {path}") from exc
        except DeserializationError as exc:
            raise RepoError(f"unreadable metadata {path}: {exc}") from exc
        if not isinstance(md.signed, kind):
            raise RepoError(f"{path} is not {kind.type} metadata")
        return md
