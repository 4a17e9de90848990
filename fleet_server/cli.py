"""camfleet-server: set up the CA and the broker, issue device certificates, run the server.

- `camfleet-server --config server.toml init`: the CA and the broker config (idempotent)
- `camfleet-server --config server.toml broker`: Mosquitto with the generated config
- `camfleet-server --config server.toml run`: ingest, health monitor, REST API
- `camfleet-server --config server.toml leave-group --instance N`: scale ingest down
- `camfleet-server --config server.toml add-user NAME --role admin`: a person's API token
- `camfleet-server --config server.toml release ...`: OTA releases (docs/ota.md)

Exit codes (common.cli): 0 done, 1 failed (the message says why), 2 wrong command line or
config file.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer

from common.cli import EXIT_USAGE, fail, make_app, run_app
from common.logs import setup_logging
from common.settings import ConfigError, load_settings
from fleet_server.backup.cli import register as register_backup
from fleet_server.broker.conf import broker_binary, write_from_settings
from fleet_server.config import ServerSettings
from fleet_server.identity.ca import CAError, CertificateAuthority
from fleet_server.ota.cli import release_app
from fleet_server.privacy.cli import privacy_app

PROG = "camfleet-server"

app = make_app(__doc__)
app.add_typer(release_app, name="release")
register_backup(app)  # issue 18: backup, restore (docs/deploy.md)
app.add_typer(privacy_app, name="privacy")  # issue 20: retention, export, erase


@dataclass(frozen=True)
class Loaded:
    """What every command gets: the settings and the CA in their state directory."""

    settings: ServerSettings
    ca: CertificateAuthority


@app.callback()
def _load(
    ctx: typer.Context,
    config: Annotated[
        Path | None, typer.Option("--config", help="the server's TOML settings file")
    ] = None,
) -> None:
    try:
        settings = load_settings(ServerSettings, config)
    except ConfigError as exc:
        fail(PROG, exc, EXIT_USAGE)
    setup_logging(settings.log_level)
    ctx.obj = Loaded(settings, CertificateAuthority(settings.pki_dir))


def loaded(ctx: typer.Context) -> Loaded:
    obj = ctx.find_root().obj
    if not isinstance(obj, Loaded):  # the callback always sets it; a guard for direct calls
        fail(PROG, "internal: settings not loaded")
    return obj


@app.command()
def init(ctx: typer.Context) -> None:
    """Create the CA (root and issuing CA, broker and server certificates, the HTTPS
    certificate of EST, OTA and the API for [broker] hosts) and the broker's config and
    ACL. Idempotent: what exists is kept."""
    from fleet_server.identity.ca_ops import ensure_est_cert

    run = loaded(ctx)
    try:
        run.ca.init(run.settings.broker.hosts)
        ensure_est_cert(run.ca, run.settings.broker.hosts)
        layout = write_from_settings(run.ca, run.settings)
    except (CAError, OSError) as exc:
        fail(PROG, exc)
    print(f"CA in {run.settings.pki_dir}; broker config {layout.conf}")


@app.command("broker-config")
def broker_config(ctx: typer.Context) -> None:
    """Rewrite mosquitto.conf and the ACL from the server's state (after a pairing change)."""
    run = loaded(ctx)
    try:
        layout = write_from_settings(run.ca, run.settings)
    except (CAError, OSError) as exc:
        fail(PROG, exc)
    print(f"wrote {layout.conf} and {layout.acl}")


@app.command()
def broker(ctx: typer.Context) -> None:
    """Run Mosquitto in the foreground with the generated config (this process becomes it,
    so the server can signal it by the pid file)."""
    run = loaded(ctx)
    try:
        layout = write_from_settings(run.ca, run.settings)
        mosquitto = broker_binary()
        if layout.pid_file is not None:  # exec keeps this pid: the server SIGHUPs it
            layout.pid_file.write_text(f"{os.getpid()}\n")
    except (CAError, OSError) as exc:
        fail(PROG, exc)
    sys.stdout.flush()
    os.execv(mosquitto, [mosquitto, "-c", str(layout.conf)])  # noqa: S606


@app.command()
def migrate(ctx: typer.Context) -> None:
    """Upgrade the database schema to this release (the server also does it at start)."""
    from fleet_server.migrate import upgrade

    upgrade(loaded(ctx).settings.db_url())


@app.command("run")
def run_server(
    ctx: typer.Context,
    role: Annotated[
        str,
        typer.Option(help="all (one process), or one systemd unit's share: api, ingest, est"),
    ] = "all",
    instance: Annotated[
        int, typer.Option(help="with --role ingest: the worker's number (its MQTT client id)")
    ] = 1,
) -> None:
    """Run the fleet server until SIGTERM or SIGINT: everything in one process (ingest,
    health monitor, rollouts, REST API, EST), or one role of it (docs/deploy.md)."""
    from fleet_server.app import serve
    from fleet_server.ingest.supervisor import EXIT_THREAD_DIED, fatal_happened
    from fleet_server.roles import Role

    try:
        chosen = Role(role)
    except ValueError:
        fail(PROG, f"unknown --role {role!r}: {', '.join(r.value for r in Role)}", EXIT_USAGE)
    if instance < 1:
        fail(PROG, "--instance counts from 1", EXIT_USAGE)
    serve(loaded(ctx).settings, chosen, instance)
    if fatal_happened():  # a thread kept dying: non-zero, so systemd starts us again
        raise typer.Exit(EXIT_THREAD_DIED)


@app.command("leave-group")
def leave_group_cmd(
    ctx: typer.Context,
    instance: Annotated[int, typer.Option(help="the stopped ingest worker's number")],
) -> None:
    """Scale down: after `run --role ingest --instance N` has stopped, store what the
    broker queued for it, leave the shared group and end its session (docs/operations.md)."""
    from fleet_server.roles import leave_group

    if instance < 1:
        fail(PROG, "--instance counts from 1", EXIT_USAGE)
    n = leave_group(loaded(ctx).settings, instance)
    print(f"ingest worker {instance} left the group; {n} queued messages stored")


@app.command("add-user")
def add_user(
    ctx: typer.Context,
    name: Annotated[
        str, typer.Argument(help="the person's name, as it will show in the audit log")
    ],
    role: Annotated[str, typer.Option(help="admin, operator or technician")],
) -> None:
    """Add a person with a role and print their API token (shown once, stored hashed)."""
    from fleet_server.access.auth import AuthError
    from fleet_server.identity.cli import add_user as add

    try:
        token = add(loaded(ctx).settings, name, role)
    except AuthError as exc:
        fail(PROG, exc)
    print(token)  # shown once, on stdout only; never logged


@app.command("issue-device")
def issue_device(
    ctx: typer.Context,
    device_id: Annotated[str, typer.Argument(help="the device id (its certificate's CN)")],
    out: Annotated[Path, typer.Option(help="directory for the key and certificate files")],
    days: Annotated[int, typer.Option(help="certificate lifetime, days")] = 30,
) -> None:
    """Issue a device key and certificate directly (labs and tests; the field enrolls by EST)."""
    try:
        creds = loaded(ctx).ca.issue_device(device_id, out, days)
    except (CAError, OSError) as exc:
        fail(PROG, exc)
    print(f"issued {creds.device_id}: {creds.directory}")


def main(argv: list[str] | None = None) -> int:
    return run_app(app, argv, PROG)


if __name__ == "__main__":
    sys.exit(main())
