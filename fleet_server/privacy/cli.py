"""``camfleet-server privacy retention | export | erase`` (docs/privacy.md): the same as the
API's, on the server machine, audited as the local ``system`` actor."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from sqlalchemy.orm import Session, sessionmaker

from common.cli import fail
from common.files import atomic_write
from fleet_server.access import audit
from fleet_server.config import ServerSettings
from fleet_server.db import make_engine, make_sessionmaker
from fleet_server.migrate import upgrade
from fleet_server.privacy import retention
from fleet_server.privacy.subject_api import export_archive, run_retention

PROG = "camfleet-server"
privacy_app = typer.Typer(help="Retention and data-subject requests (docs/privacy.md)")
Site = Annotated[str, typer.Option("--site", help="site id")]
Since = Annotated[float, typer.Option("--since", help="from, Unix time (included)")]
Until = Annotated[float, typer.Option("--until", help="until, Unix time (excluded)")]


def _settings(ctx: typer.Context) -> ServerSettings:
    settings = getattr(ctx.find_root().obj, "settings", None)
    if not isinstance(settings, ServerSettings):
        fail(PROG, "internal: settings not loaded")
    return settings


def _sessions(settings: ServerSettings) -> sessionmaker[Session]:
    upgrade(settings.db_url())
    return make_sessionmaker(make_engine(settings.db_url()))


@privacy_app.command("retention")
def retention_now(ctx: typer.Context) -> None:
    """Delete now what is past each site's retention; print the counts."""
    settings = _settings(ctx)
    deleted = run_retention(_sessions(settings), settings.privacy, time.time())
    for site, n in sorted(deleted.items()):
        typer.echo(f"{site}: {n} events deleted")
    typer.echo(f"total: {sum(deleted.values())}")


Out = Annotated[Path, typer.Option("--out", help="the tar archive to write")]


@privacy_app.command("export")
def export(ctx: typer.Context, site: Site, since: Since, until: Until, out: Out) -> None:
    """All images of a site in a time range, as one tar archive with a manifest."""
    settings = _settings(ctx)
    with _sessions(settings).begin() as db:
        found = retention.site_images(db, site, since, until, settings.privacy.export_max_images)
        audit.record(db, audit.SYSTEM, "privacy.export", site, "ok",
                     {"since": since, "until": until, "images": len(found)})  # fmt: skip
    atomic_write(out, export_archive(found, site, since, until), 0o600)
    typer.echo(f"{len(found)} images of {site} in {out}")


@privacy_app.command("erase")
def erase(ctx: typer.Context, site: Site, since: Since, until: Until) -> None:
    """Remove all images of a site in a time range (the events stay, marked)."""
    settings = _settings(ctx)
    with _sessions(settings).begin() as db:
        n = retention.erase_images(db, site, since, until, audit.SYSTEM,
                                   settings.privacy.export_max_images)  # fmt: skip
    typer.echo(f"{n} images of {site} erased")
