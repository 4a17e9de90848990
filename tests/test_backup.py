"""camfleet-server backup / restore (fleet_server/backup, docs/deploy.md "Backups").

The archive format against broken archives (flipped byte, truncated, unlisted or unsafe
members, a wrong hash), and the restore drill with real processes: a running fleet backed
up, its server lost, restored onto a fresh one (another state directory and database,
SQLite to SQLite and PostgreSQL to PostgreSQL), every device reporting again with its own
certificate, the revoked one still out, and broken archives refused with nothing changed.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fleet_server.access.auth import Authenticator
from fleet_server.backup import database
from fleet_server.backup.archive import (
    MANIFEST,
    ArchiveWriter,
    DatabaseEntry,
    Manifest,
    unpack_verified,
)
from fleet_server.backup.errors import ArchiveError, NotFreshError
from fleet_server.backup.run import backup, restore
from fleet_server.config import ServerSettings
from fleet_server.db import make_engine, make_sessionmaker
from fleet_server.identity.ca import CertificateAuthority
from fleet_server.identity.cli import add_user
from hil_tests.restore_drill import DrillConfig, DrillResult, Fleet, cli, run_drill
from hil_tests.server import ServerProcess


def _manifest() -> Manifest:
    return Manifest(format=1, kind="camfleet-backup", created="2026-12-01T00:00:00Z",
                    camfleet="0.1.0", host="test", files={}, left_out=[],
                    database=DatabaseEntry(kind="sqlite", file="db/fleet.sqlite",
                                           revision=None))  # fmt: skip


def _archive(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    (src / "pki").mkdir(parents=True)
    (src / "db.sqlite").write_bytes(os.urandom(50_000))
    (src / "pki" / "issuing.key").write_bytes(b"key material")
    (src / "pki" / "issuing.key").chmod(0o600)
    out = tmp_path / "backup.tar.gz"
    with ArchiveWriter(out) as w:
        w.add_file("db/fleet.sqlite", src / "db.sqlite")
        w.add_file("pki/issuing.key", src / "pki" / "issuing.key")
        w.finish(_manifest())
    return out


def test_archive_round_trip_keeps_bytes_and_modes(tmp_path: Path) -> None:
    out = _archive(tmp_path)
    assert out.stat().st_mode & 0o777 == 0o600  # it holds keys
    assert not list(tmp_path.glob(".*tmp*"))
    manifest = unpack_verified(out, tmp_path / "x")
    assert set(manifest.files) == {"db/fleet.sqlite", "pki/issuing.key"}
    assert manifest.files["pki/issuing.key"].mode == 0o600
    assert (tmp_path / "x" / "db/fleet.sqlite").read_bytes() == (
        tmp_path / "src" / "db.sqlite"
    ).read_bytes()


def test_a_failed_backup_leaves_no_file(tmp_path: Path) -> None:
    out = tmp_path / "b.tar.gz"
    with pytest.raises(FileNotFoundError), ArchiveWriter(out) as w:
        w.add_file("db/fleet.sqlite", tmp_path / "missing")
    assert not out.exists() and not list(tmp_path.iterdir())


def _rewrite(src: Path, dest: Path, change: str) -> Path:
    """A copy of archive ``src`` with one member changed as ``change`` says."""
    with tarfile.open(src, "r:gz") as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar]  # type: ignore[union-attr]
    with tarfile.open(dest, "w:gz") as tar:
        for m, original in members:
            data = original
            if change == "tamper" and m.name == "pki/issuing.key":
                data = b"other key!!!"
            if change == "drop" and m.name == "pki/issuing.key":
                continue
            if change == "escape" and m.name == "pki/issuing.key":
                m.name = "../escape.key"
            tar.addfile(m, io.BytesIO(data))
            if change == "extra" and m.name == "db/fleet.sqlite":
                extra = tarfile.TarInfo("pki/planted.key")
                extra.size = 3
                tar.addfile(extra, io.BytesIO(b"bad"))
    return dest


@pytest.mark.parametrize(
    ("change", "reason"),
    [("flip", "corrupt|sha256"), ("truncate", "truncated"), ("tamper", "sha256"),
     ("drop", "missing"), ("extra", "unlisted"), ("escape", "safe relative name"),
     ("empty", "truncated")],
)  # fmt: skip
def test_broken_archives_are_refused_and_leave_nothing(
    tmp_path: Path, change: str, reason: str
) -> None:
    good = _archive(tmp_path)
    bad = tmp_path / "bad.tar.gz"
    data = good.read_bytes()
    if change == "flip":
        middle = len(data) // 2
        bad.write_bytes(data[:middle] + bytes([data[middle] ^ 0x40]) + data[middle + 1 :])
    elif change == "truncate":
        bad.write_bytes(data[: int(len(data) * 0.95)])
    elif change == "empty":
        bad.write_bytes(b"")
    else:
        _rewrite(good, bad, change)
    dest = tmp_path / "unpacked"
    with pytest.raises(ArchiveError, match=reason):
        unpack_verified(bad, dest)
    assert not dest.exists()
    assert not (tmp_path / "escape.key").exists()


def test_manifest_with_unknown_keys_is_refused(tmp_path: Path) -> None:
    good = _archive(tmp_path)
    with tarfile.open(good, "r:gz") as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar]  # type: ignore[union-attr]
    bad = tmp_path / "bad.tar.gz"
    with tarfile.open(bad, "w:gz") as tar:
        for m, original in members:
            data = original
            if m.name == MANIFEST:
                doc = json.loads(data)
                doc["surprise"] = True
                data = json.dumps(doc).encode()
                m.size = len(data)
            tar.addfile(m, io.BytesIO(data))
    with pytest.raises(ArchiveError, match="not valid"):
        unpack_verified(bad, tmp_path / "x")


# ------------------------------------------------------------------ the drill


def _pg_admin() -> str:
    return os.environ.get("CAMFLEET_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/postgres")


@pytest.fixture
def pg_pair() -> Iterator[tuple[str, str]]:
    """Two new, empty PostgreSQL databases: the old server's and the restored one's.
    Skipped when no server answers, unless CAMFLEET_REQUIRE_PG=1 (CI)."""
    import psycopg

    try:
        admin = psycopg.connect(_pg_admin(), autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        if os.environ.get("CAMFLEET_REQUIRE_PG") == "1":
            pytest.fail(f"PostgreSQL required but not reachable: {exc}")
        pytest.skip(f"no PostgreSQL server: {exc}")
    names = [f"camfleet_drill_{uuid.uuid4().hex[:10]}" for _ in range(2)]
    with admin:
        for name in names:
            admin.execute(f'CREATE DATABASE "{name}"')
    base = _pg_admin().rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://")
    try:
        yield f"{base}/{names[0]}", f"{base}/{names[1]}"
    finally:
        with psycopg.connect(_pg_admin(), autocommit=True) as admin:
            for name in names:
                admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _settings(data: Path, url: str) -> ServerSettings:
    return ServerSettings(data_dir=data, database_url=url)


def test_postgresql_round_trip_through_pg_dump_and_pg_restore(
    tmp_path: Path, pg_pair: tuple[str, str]
) -> None:
    """The PostgreSQL path of backup and restore in one process: pg_dump of a database with
    people in it, pg_restore into an empty one, and a used database refused."""
    a = _settings(tmp_path / "a", pg_pair[0])
    CertificateAuthority(a.pki_dir).init()
    token = add_user(a, "alice", "admin")
    archive = backup(a, tmp_path / "b.tar.gz").path
    b = _settings(tmp_path / "b", pg_pair[1])
    restored = restore(b, archive)
    assert restored.manifest.database.kind == "postgresql"
    assert restored.manifest.database.revision == database.revision(pg_pair[0])
    engine = make_engine(pg_pair[1])
    try:
        users = Authenticator(make_sessionmaker(engine))
        who = users.identify(token, "test")  # the person and her token came back
        assert who is not None and (who.name, who.role) == ("alice", "admin")
    finally:
        engine.dispose()
    with pytest.raises(NotFreshError):  # B has a CA and tables now: not fresh
        restore(b, archive)
    c = _settings(tmp_path / "c", pg_pair[0])  # a fresh directory, A's used database
    with pytest.raises(NotFreshError, match="tables"):
        restore(c, archive)
    assert not (tmp_path / "c" / "pki").exists()


def _refusals(fleet: Fleet, archive: Path) -> None:
    """Broken archives and a used server are refused; the target stays as it was."""
    data = archive.read_bytes()
    work = fleet.work
    flipped = work / "flipped.tar.gz"
    flipped.write_bytes(data[: len(data) // 2] + bytes([data[len(data) // 2] ^ 0x01])
                        + data[len(data) // 2 + 1 :])  # fmt: skip
    half = work / "half.tar.gz"
    half.write_bytes(data[: len(data) // 2])
    target = fleet.fresh_config("c", f"sqlite:///{work / 'c' / 'fleet.db'}")
    for broken in (flipped, half):
        done = cli(target, "restore", str(broken))
        assert done.returncode == 1, done.stdout + done.stderr
        assert "restore refused" in done.stderr and broken.name in done.stderr
        assert sorted(p.name for p in (work / "c").iterdir()) == ["server.toml"]
    check = cli(target, "restore", "--check", str(half))
    assert check.returncode == 1 and "restore refused" in check.stderr
    # the old server's own state directory is not fresh: refused, nothing touched
    old = work / "a" / "server.toml"
    before = sorted(p.name for p in (work / "a" / "pki").iterdir())
    done = cli(old, "restore", str(archive))
    assert done.returncode == 1 and "not fresh" in done.stderr, done.stderr
    assert sorted(p.name for p in (work / "a" / "pki").iterdir()) == before
    good = cli(target, "restore", "--check", str(archive))
    assert good.returncode == 0 and "whole" in good.stdout


def _restored(new: ServerProcess, result: DrillResult) -> None:
    """The restored server, running: people, devices and the revocation came back."""
    status, page = new.get("/api/devices?limit=1000", token=result.admin_token)
    assert status == 200 and page["total"] == 6  # the old admin's token works here
    revoked = new.device(result.revoked)
    assert revoked is not None and revoked["state"] != "online"
    time.sleep(1.0)  # a revoked device retrying meanwhile would have come in by now
    assert (new.device(result.revoked) or {}).get("state") != "online"


def _drill(tmp_path: Path, urls: tuple[str, str], between: Any = None) -> None:
    result = run_drill(tmp_path, *urls, DrillConfig(devices=6), between=between,
                       after=_restored)  # fmt: skip
    assert result.reporting == 5  # all but the revoked one, with no new certificate
    assert result.restore_s < result.reconnect_s < 120
    a, b = tmp_path / "a", tmp_path / "b"
    # the offline root keys were never in the backup, and are not on the restored server
    assert (a / "pki" / "root.key").exists() and list((a / "ota-keys").glob("root-*.key"))
    assert not (b / "pki" / "root.key").exists() and (b / "pki" / "issuing.key").exists()
    assert {p.name for p in (b / "ota-keys").glob("*.key")} == {
        "targets.key", "snapshot.key", "timestamp.key"
    }  # fmt: skip
    for same in ("pki/root.pem", "pki/issuing.key", "pki/crl.pem", "ota/metadata/1.root.json",
                 "ota/metadata/1.targets.json"):  # fmt: skip
        assert (b / same).read_bytes() == (a / same).read_bytes(), same
    assert result.revoked in (b / "broker" / "dynamic-security.json").read_text()
    conf = (b / "broker" / "mosquitto.conf").read_text().splitlines()
    # the restored broker's access rules (the camfleet_acl plugin's pairs, or the ACL file
    # where the plugin is not built) are its own files, not the old server's
    rules = [ln for ln in conf if ln.startswith(("plugin_opt_pairs_file ", "acl_file "))]
    assert rules and all(f"{b}/broker/" in ln for ln in rules), rules
    assert str(b) in (b / "broker" / "mosquitto.conf").read_text()  # this server's paths


@pytest.mark.slow
def test_restore_drill_sqlite_every_device_reports_again(tmp_path: Path) -> None:
    urls = f"sqlite:///{tmp_path / 'a.db'}", f"sqlite:///{tmp_path / 'b.db'}"
    _drill(tmp_path, urls, between=_refusals)


@pytest.mark.hil_long  # make hil; make test runs the PostgreSQL round trip above
def test_restore_drill_postgresql_every_device_reports_again(
    tmp_path: Path, pg_pair: tuple[str, str]
) -> None:
    _drill(tmp_path, pg_pair)
