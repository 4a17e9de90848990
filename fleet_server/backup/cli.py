"""``camfleet-server backup`` and ``camfleet-server restore`` (docs/deploy.md, "Backups").

Registered on the server's command line by ``register(app)``; each command finds the
loaded settings on the root context, as the other server commands do.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from common.cli import fail
from fleet_server.backup.errors import BackupError
from fleet_server.backup.run import backup as take_backup
from fleet_server.backup.run import backup_into, check_archive, restore
from fleet_server.config import ServerSettings

PROG = "camfleet-server"


def _settings(ctx: typer.Context) -> ServerSettings:
    settings = getattr(ctx.find_root().obj, "settings", None)
    if not isinstance(settings, ServerSettings):
        fail(PROG, "internal: settings not loaded")
    return settings


def backup(
    ctx: typer.Context,
    out: Annotated[
        Path | None, typer.Option("--out", help="the archive to write (must not exist)")
    ] = None,
    directory: Annotated[
        Path | None,
        typer.Option("--dir", help="write camfleet-backup-<UTC time>.tar.gz into this directory"),
    ] = None,
    keep: Annotated[
        int, typer.Option(help="with --dir: how many backups to keep there", min=1)
    ] = 14,
) -> None:
    """Back up the running server: database, CA (not the root key), TUF online keys and
    repository, broker state, into one archive (tar.gz, mode 0600)."""
    settings = _settings(ctx)
    if (out is None) == (directory is None):
        fail(PROG, "give either --out FILE or --dir DIR", 2)
    try:
        if out is not None:
            result = take_backup(settings, out)
        else:
            assert directory is not None
            result = backup_into(settings, directory, keep)
    except (BackupError, OSError) as exc:
        fail(PROG, f"backup failed: {exc}")
    print(f"{result.path}: {result.size} bytes, {result.files} files, database "
          f"{result.database.kind} at revision {result.database.revision}")  # fmt: skip
    for line in result.left_out:
        print(f"left out: {line}")


def restore_command(
    ctx: typer.Context,
    archive: Annotated[Path, typer.Argument(help="a camfleet-server backup archive")],
    check: Annotated[
        bool, typer.Option("--check", help="only check that the archive is whole")
    ] = False,
) -> None:
    """Restore a backup onto this fresh server (its own state directory and an empty
    database). The whole archive is checked first: a corrupt or partial one is refused
    and nothing changes."""
    try:
        if check:
            manifest = check_archive(archive)
            print(f"{archive}: whole; {len(manifest.files)} files, taken {manifest.created} "
                  f"on {manifest.host} (camfleet {manifest.camfleet})")  # fmt: skip
            return
        result = restore(_settings(ctx), archive)
    except (BackupError, OSError) as exc:
        fail(PROG, f"restore refused: {exc}")
    m = result.manifest
    print(f"restored {result.restored} files and the {m.database.kind} database of the backup "
          f"taken {m.created} on {m.host}; start the server now")  # fmt: skip
    for name in result.not_placed:
        print(f"not restored (no place in this server's settings): {name}")


def register(app: typer.Typer) -> None:
    app.command("backup")(backup)
    app.command("restore")(restore_command)
