"""The TUF repository of camfleet releases, on the signing side: keys, staging targets,
publishing, the timestamp refresh and key rotation. Reading what is published (the layout,
target entries, metadata without keys) is ``fleet_server.ota.published``.

Signing keys live in a keys directory K, one PEM (PKCS#8, ed25519) per key, mode 0600:
``root-<i>.key`` (offline in production: only ``init`` and ``rotate`` need them),
``targets.key``, ``snapshot.key``, ``timestamp.key`` (online: ``publish`` and the server's
timestamp refresh need only these), and ``policy.json`` (expiry per role, not secret).
Every write goes through ``common.files.atomic_write``; a lock file in K serialises
writers (the CLI and the server's refresh timer). No key material is ever logged.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.serialization import load_pem_private_key
from securesystemslib.signer import CryptoSigner
from tuf.api.metadata import (
    Metadata,
    MetaFile,
    Root,
    Snapshot,
    TargetFile,
    Targets,
    Timestamp,
)
from tuf.api.serialization.json import JSONSerializer

from common.files import atomic_write, sync_dir
from fleet_server.ota.published import (
    CHUNK,
    PublishedRepo,
    RepoError,
    TargetEntry,
    check_target_path,
    sha256_file,
    target_file_path,
)

# RepoError is the package's error (defined with the reading side); the CLI takes it from here
log = logging.getLogger(__name__)

ONLINE_ROLES = ("targets", "snapshot", "timestamp")
ROLES = ("root", *ONLINE_ROLES)
DEFAULT_EXPIRY_DAYS: dict[str, float] = {
    "root": 365.0,
    "targets": 90.0,
    "snapshot": 7.0,
    "timestamp": 1.0,
}
_KEY_MODE = 0o600


def _utcnow() -> datetime:
    return datetime.now(UTC)


class TufRepo(PublishedRepo):
    """A TUF repository on disk with its keys (layouts: this module's docstring and
    ``fleet_server.ota.published``'s)."""

    def __init__(
        self,
        repo_dir: Path,
        keys_dir: Path,
        *,
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        super().__init__(repo_dir)
        self.keys_dir = Path(keys_dir)
        self.clock = clock
        self.expiry_days = self._load_policy()

    # -- creation -------------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        repo_dir: Path,
        keys_dir: Path,
        *,
        root_threshold: int = 1,
        root_keys: int = 1,
        expiry_days: Mapping[str, float] | None = None,
        clock: Callable[[], datetime] = _utcnow,
    ) -> TufRepo:
        """Make keys, version 1 of every role and an empty target list."""
        repo_dir, keys_dir = Path(repo_dir), Path(keys_dir)
        if not 1 <= root_threshold <= root_keys:
            raise RepoError(f"root threshold {root_threshold} must be 1..{root_keys} (keys)")
        if (repo_dir / "metadata" / "1.root.json").exists():
            raise RepoError(f"{repo_dir} already holds a TUF repository")
        if keys_dir.is_dir() and any(keys_dir.glob("*.key*")):
            raise RepoError(f"{keys_dir} already holds signing keys; never overwritten")
        policy = dict(DEFAULT_EXPIRY_DAYS)
        for role, days in (expiry_days or {}).items():
            if role not in DEFAULT_EXPIRY_DAYS or days <= 0:
                raise RepoError(f"bad expiry {role}={days}: roles {ROLES}, days > 0")
            policy[role] = float(days)
        (repo_dir / "metadata").mkdir(parents=True, exist_ok=True)
        (repo_dir / "targets").mkdir(parents=True, exist_ok=True)
        keys_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        atomic_write(str(keys_dir / "policy.json"), json.dumps(policy).encode(), _KEY_MODE)

        root_signers = [CryptoSigner.generate_ed25519() for _ in range(root_keys)]
        online = {role: CryptoSigner.generate_ed25519() for role in ONLINE_ROLES}
        now = clock()
        root = Root(expires=now + timedelta(days=policy["root"]), consistent_snapshot=True)
        for s in root_signers:
            root.add_key(s.public_key, "root")
        for role, s in online.items():
            root.add_key(s.public_key, role)
        root.roles["root"].threshold = root_threshold
        for i, s in enumerate(root_signers, start=1):
            _write_key(keys_dir / f"root-{i}.key", s)
        for role, s in online.items():
            _write_key(keys_dir / f"{role}.key", s)

        md_root = Metadata(root)
        for s in root_signers:
            md_root.sign(s, append=True)
        _write_md(repo_dir / "metadata" / "1.root.json", md_root)
        out = cls(repo_dir, keys_dir, clock=clock)
        with out._locked():
            out._publish_locked(Targets(version=1, expires=now), bump=False)
        log.info(
            "TUF repository created in %s (root %d-of-%d)", repo_dir, root_threshold, root_keys
        )
        return out

    # -- reading (and what PublishedRepo reads) -------------------------------------------

    def list_targets(self) -> list[TargetEntry]:
        """Published targets, then staged ones (not yet visible to devices)."""
        out = [TargetEntry.of(t, published=True) for t in self.targets().signed.targets.values()]
        out += [TargetEntry.of(t, published=False) for t in self._staged().values()]
        return sorted(out, key=lambda e: (not e.published, e.path))

    def local_target(self, path: str) -> Path:
        """The file holding a published or staged target's bytes."""
        t = self._staged().get(path) or self.targets().signed.targets.get(path)
        if t is None:
            raise RepoError(f"no target {path!r} in {self.repo_dir}")
        return target_file_path(self.repo_dir, path, t.hashes["sha256"])

    # -- changing -------------------------------------------------------------------------

    def add_target(self, path: str, data: Path, custom: dict[str, Any]) -> None:
        """Copy ``data`` into the repository (content-addressed) and stage it for publish."""
        check_target_path(path)
        data = Path(data)
        if not data.is_file():
            raise RepoError(f"target file {data} does not exist")
        json.dumps(custom)  # custom must be plain JSON
        digest = sha256_file(data)
        length = data.stat().st_size
        dest = target_file_path(self.repo_dir, path, digest)
        with self._locked():
            published = self.targets().signed.targets.get(path)
            if published is not None and published.hashes.get("sha256") != digest:
                raise RepoError(f"target {path!r} is already published with other content")
            dest.parent.mkdir(parents=True, exist_ok=True)
            if not dest.exists() or sha256_file(dest) != digest:
                _copy_atomic(data, dest)
            staged = self._staged()
            staged[path] = TargetFile(
                length, {"sha256": digest}, path, unrecognized_fields={"custom": custom}
            )
            self._write_staged(staged)
        log.info("staged target %s (%d bytes, sha256 %s)", path, length, digest)

    def publish(self) -> int:
        """New targets (with staged targets), snapshot and timestamp versions. Returns the
        new targets version."""
        with self._locked():
            targets = self.targets().signed
            for path, t in self._staged().items():
                targets.targets[path] = t
            version = self._publish_locked(targets)
            (self.repo_dir / "staged.json").unlink(missing_ok=True)
        return version

    def refresh_timestamp(self) -> None:
        """Sign a new timestamp (and snapshot / targets when they would expire before it).

        Uses only the online keys; call it well before ``timestamp`` expires.
        """
        with self._locked():
            now = self.clock()
            ts_expiry = now + self._lifetime("timestamp")
            if self.targets().signed.expires <= ts_expiry:
                self._publish_locked(self.targets().signed)
                return
            snap = self.snapshot()
            if snap.signed.expires <= ts_expiry:
                self._write_snapshot_and_timestamp(self.targets())
                return
            self._write_timestamp(snap)
        log.info("TUF timestamp refreshed")

    def refresh_due(self) -> bool:
        """True when less than half of the timestamp's lifetime is left (or it expired)."""
        left = self.timestamp().signed.expires - self.clock()
        return left < self._lifetime("timestamp") / 2

    def rotate(self, role: str) -> None:
        """Replace a role's key(s): a new root version lists the new key and is signed by a
        threshold of the old root keys and, for root, of the new ones too (clients walk the
        chain N -> N+1). The role's metadata is then re-signed with the new key."""
        if role not in ROLES:
            raise RepoError(f"unknown role {role!r}: one of {ROLES}")
        with self._locked():
            old_md = self.root()
            old_signers = self._root_signers(old_md.signed)
            root = Root.from_dict(old_md.signed.to_dict())
            root.version += 1
            root.expires = self.clock() + self._lifetime("root")
            if role == "root":
                count = len(old_md.signed.roles["root"].keyids)
                new_signers = [CryptoSigner.generate_ed25519() for _ in range(count)]
                for keyid in list(root.roles["root"].keyids):
                    root.revoke_key(keyid, "root")
                for s in new_signers:
                    root.add_key(s.public_key, "root")
            else:
                new = CryptoSigner.generate_ed25519()
                for keyid in list(root.roles[role].keyids):
                    root.revoke_key(keyid, role)
                root.add_key(new.public_key, role)
            # new keys first (as *.next), then the root that trusts them, then the renames:
            # a crash at any point leaves a key for every key id the newest root lists
            fresh = new_signers if role == "root" else [new]
            names = (
                [f"root-{i}.key" for i in range(1, len(fresh) + 1)]
                if role == "root"
                else [f"{role}.key"]
            )
            for name, signer in zip(names, fresh, strict=True):
                _write_key(self.keys_dir / f"{name}.next", signer)
            md = Metadata(root)
            for s in old_signers + (new_signers if role == "root" else []):
                md.sign(s, append=True)
            _write_md(self.metadata_dir / f"{root.version}.root.json", md)
            for name in names:
                os.replace(self.keys_dir / f"{name}.next", self.keys_dir / name)
            if role == "root":
                for old_key in self.keys_dir.glob("root-*.key"):
                    if old_key.name not in names:
                        old_key.unlink()
            else:
                self._publish_locked(self.targets().signed)
        log.info("rotated %s key(s); root is now version %d", role, root.version)

    # -- internals ------------------------------------------------------------------------

    def _publish_locked(self, targets: Targets, *, bump: bool = True) -> int:
        if bump:
            targets.version += 1
        targets.expires = self.clock() + self._lifetime("targets")
        md = Metadata(targets)
        md.sign(self._signer("targets"))
        _write_md(self.metadata_dir / f"{targets.version}.targets.json", md)
        self._write_snapshot_and_timestamp(md)
        return targets.version

    def _write_snapshot_and_timestamp(self, targets: Metadata[Targets]) -> None:
        old = self.metadata_dir / "timestamp.json"
        version = self.snapshot().signed.version + 1 if old.exists() else 1
        snap = Snapshot(
            version=version,
            expires=self.clock() + self._lifetime("snapshot"),
            meta={"targets.json": MetaFile(version=targets.signed.version)},
        )
        md = Metadata(snap)
        md.sign(self._signer("snapshot"))
        _write_md(self.metadata_dir / f"{version}.snapshot.json", md)
        self._write_timestamp(md)

    def _write_timestamp(self, snapshot: Metadata[Snapshot]) -> None:
        path = self.metadata_dir / "timestamp.json"
        version = self.timestamp().signed.version + 1 if path.exists() else 1
        ts = Timestamp(
            version=version,
            expires=self.clock() + self._lifetime("timestamp"),
            snapshot_meta=MetaFile(version=snapshot.signed.version),
        )
        md = Metadata(ts)
        md.sign(self._signer("timestamp"))
        _write_md(path, md)

    def _lifetime(self, role: str) -> timedelta:
        return timedelta(days=self.expiry_days[role])

    def _signer(self, role: str) -> CryptoSigner:
        """The online key the newest root lists for ``role`` (``<role>.key``, or the
        ``.next`` one a rotation interrupted before its rename)."""
        wanted = set(self.root().signed.roles[role].keyids)
        for path in (self.keys_dir / f"{role}.key", self.keys_dir / f"{role}.key.next"):
            if path.is_file():
                signer = _read_key(path, role)
                if signer.public_key.keyid in wanted:
                    return signer
        raise RepoError(f"no {role} key in {self.keys_dir} matches the current root")

    def _root_signers(self, root: Root) -> list[CryptoSigner]:
        signers: list[CryptoSigner] = []
        wanted = set(root.roles["root"].keyids)
        paths = [*self.keys_dir.glob("root-*.key"), *self.keys_dir.glob("root-*.key.next")]
        for path in sorted(paths):
            s = _read_key(path, "root")
            if s.public_key.keyid in wanted:
                signers.append(s)
                wanted.discard(s.public_key.keyid)
        if len(signers) < root.roles["root"].threshold:
            raise RepoError(
                f"need {root.roles['root'].threshold} root key(s) of the current root in "
                f"{self.keys_dir}, found {len(signers)} (root keys are kept offline: bring them)"
            )
        return signers

    def _load_policy(self) -> dict[str, float]:
        path = self.keys_dir / "policy.json"
        if not path.is_file():
            return dict(DEFAULT_EXPIRY_DAYS)
        loaded = json.loads(path.read_text())
        return {r: float(loaded.get(r, d)) for r, d in DEFAULT_EXPIRY_DAYS.items()}

    def _staged(self) -> dict[str, TargetFile]:
        path = self.repo_dir / "staged.json"
        if not path.is_file():
            return {}
        raw: dict[str, Any] = json.loads(path.read_text())
        return {p: TargetFile.from_dict(d, p) for p, d in raw.items()}

    def _write_staged(self, staged: Mapping[str, TargetFile]) -> None:
        raw = {p: t.to_dict() for p, t in sorted(staged.items())}
        atomic_write(str(self.repo_dir / "staged.json"), json.dumps(raw, indent=1).encode())

    def _locked(self) -> contextlib.AbstractContextManager[None]:
        return writers_lock(self.keys_dir)


@contextlib.contextmanager
def writers_lock(keys_dir: Path) -> Iterator[None]:
    """The repository's writers' lock (a file in the keys directory): every change of the
    repository and its keys holds it, and so does a backup while it copies them."""
    keys_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(keys_dir / ".lock", os.O_RDWR | os.O_CREAT, _KEY_MODE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _write_md(path: Path, md: Metadata[Any]) -> None:
    atomic_write(str(path), md.to_bytes(JSONSerializer(compact=False)))


def _write_key(path: Path, signer: CryptoSigner) -> None:
    atomic_write(str(path), signer.private_bytes, _KEY_MODE)


def _read_key(path: Path, role: str) -> CryptoSigner:
    try:
        pem = path.read_bytes()
    except FileNotFoundError as exc:
        raise RepoError(f"no {role} signing key at {path}") from exc
    if path.stat().st_mode & 0o077:
        raise RepoError(f"{path} is readable by others: chmod 600 it")
    return CryptoSigner(load_pem_private_key(pem, None))


def _copy_atomic(src: Path, dest: Path) -> None:
    tmp = dest.with_name(dest.name + ".tmp")
    with src.open("rb") as fi, tmp.open("wb") as fo:
        shutil.copyfileobj(fi, fo, CHUNK)
        fo.flush()
        os.fsync(fo.fileno())
    os.replace(tmp, dest)
    sync_dir(str(dest.parent))
