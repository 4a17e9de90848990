"""The database's part of a backup: a consistent snapshot taken while the server writes,
and its restore into an empty database.

- SQLite: the online backup API (``sqlite3.Connection.backup``) copies the database as of
  one moment, whatever other connections write meanwhile (WAL mode);
- PostgreSQL: ``pg_dump --format=custom`` (one transaction snapshot) and ``pg_restore
  --single-transaction`` into an empty database: all of it or nothing. The tools come with
  Debian's ``postgresql-client``; the password, if the URL has one, goes to them in their
  environment (``PGPASSWORD``), never on a command line or in a log.
"""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
import subprocess
from pathlib import Path

from sqlalchemy import inspect
from sqlalchemy.engine import URL, make_url

from common.files import sync_dir
from fleet_server.backup.archive import DatabaseEntry
from fleet_server.backup.errors import DatabaseError, NotFreshError
from fleet_server.db import make_engine

log = logging.getLogger(__name__)

SQLITE_FILE = "db/fleet.sqlite"
PG_FILE = "db/fleet.pgdump"
_TOOL_TIMEOUT_S = 3600.0


def _kind(url: URL) -> str:
    backend = url.get_backend_name()
    if backend not in ("sqlite", "postgresql"):
        raise DatabaseError(f"cannot back up a {backend} database (SQLite or PostgreSQL)")
    return backend


def _sqlite_path(url: URL) -> Path:
    if not url.database or url.database == ":memory:":
        raise DatabaseError("the SQLite database is not a file")
    return Path(url.database)


def _revision_sqlite(path: Path) -> str | None:
    con = sqlite3.connect(path)
    try:
        row = con.execute("SELECT version_num FROM alembic_version").fetchone()
    except sqlite3.Error:
        return None
    finally:
        con.close()
    return str(row[0]) if row else None


def _pg_env(url: URL) -> dict[str, str]:
    """libpq's environment for the URL: host (or the socket directory of ``?host=``), port,
    user, password, database."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    host = url.host or url.query.get("host")
    parts = {
        "PGHOST": host if isinstance(host, str) else None,
        "PGPORT": str(url.port) if url.port else None,
        "PGUSER": url.username,
        "PGPASSWORD": url.password if isinstance(url.password, str) else None,
        "PGDATABASE": url.database,
    }
    env.update({k: v for k, v in parts.items() if v})
    return env


def _tool(name: str) -> str:
    found = shutil.which(name) or next(
        (str(p) for p in sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))[-1:]), None
    )
    if found is None:
        raise DatabaseError(f"{name} not found", "apt-get install postgresql-client")
    return found


def _run(argv: list[str], env: dict[str, str], what: str) -> None:
    try:
        done = subprocess.run(argv, env=env, capture_output=True, text=True,
                              timeout=_TOOL_TIMEOUT_S, check=False)  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise DatabaseError(f"{what} failed: {exc}") from exc
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines()
        raise DatabaseError(f"{what} failed: {lines[-1] if lines else done.returncode}")


def revision(url_text: str) -> str | None:
    """The schema revision the database is at (None: no schema yet)."""
    engine = make_engine(url_text)
    try:
        with engine.connect() as db:
            if not inspect(db).has_table("alembic_version"):
                return None
            row = db.exec_driver_sql("SELECT version_num FROM alembic_version").first()
    finally:
        engine.dispose()
    return str(row[0]) if row else None


def snapshot(url_text: str, dest: Path) -> tuple[DatabaseEntry, Path]:
    """Write a consistent snapshot of the database under ``dest``; its entry and file."""
    url = make_url(url_text)
    if _kind(url) == "sqlite":
        src_path = _sqlite_path(url)
        if not src_path.is_file():
            raise DatabaseError(f"no SQLite database at {src_path}")
        out = dest / SQLITE_FILE
        out.parent.mkdir(parents=True, exist_ok=True)
        src = sqlite3.connect(src_path, timeout=30)
        dst = sqlite3.connect(out)
        try:
            src.backup(dst)  # one consistent copy, pages read under a read transaction
        except sqlite3.Error as exc:
            raise DatabaseError(f"SQLite backup of {src_path} failed: {exc}") from exc
        finally:
            dst.close()
            src.close()
        return DatabaseEntry(kind="sqlite", file=SQLITE_FILE, revision=_revision_sqlite(out)), out
    out = dest / PG_FILE
    out.parent.mkdir(parents=True, exist_ok=True)
    rev = revision(url_text)
    argv = [_tool("pg_dump"), "--format=custom", "--no-owner", "--no-privileges", f"--file={out}"]
    _run(argv, _pg_env(url), "pg_dump")
    return DatabaseEntry(kind="postgresql", file=PG_FILE, revision=rev), out


def check_empty(url_text: str) -> None:
    """Refuse (``NotFreshError``) a database that has tables already."""
    url = make_url(url_text)
    if _kind(url) == "sqlite" and not _sqlite_path(url).exists():
        return
    engine = make_engine(url_text)
    try:
        with engine.connect() as db:
            tables = inspect(db).get_table_names()
    except Exception as exc:  # the message of the driver says what is wrong (host, auth)
        raise DatabaseError(f"cannot open the target database: {exc}") from exc
    finally:
        engine.dispose()
    if tables:
        raise NotFreshError(f"the target database has {len(tables)} tables already "
                            f"({', '.join(sorted(tables)[:4])}...)",
                            "restore into a new, empty database")  # fmt: skip


def load(url_text: str, entry: DatabaseEntry, dump: Path) -> None:
    """Put the snapshot into the (empty) database ``url_text`` names."""
    url = make_url(url_text)
    kind = _kind(url)
    if kind != entry.kind:
        raise DatabaseError(f"the backup holds a {entry.kind} database, the server is set "
                            f"up for {kind}", "restore onto the same kind of database")  # fmt: skip
    if kind == "sqlite":
        path = _sqlite_path(url)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.restore-{os.getpid()}")
        shutil.copyfile(dump, tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        for stale in (Path(f"{path}-wal"), Path(f"{path}-shm")):
            stale.unlink(missing_ok=True)
        os.replace(tmp, path)
        sync_dir(path.parent)
        return
    argv = [_tool("pg_restore"), "--single-transaction", "--exit-on-error", "--no-owner",
            "--no-privileges", f"--dbname={url.database}", str(dump)]  # fmt: skip
    _run(argv, _pg_env(url), "pg_restore")
    log.info("database restored into %s", url.render_as_string(hide_password=True))
