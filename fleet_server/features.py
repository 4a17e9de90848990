"""Where server features plug in: each adds its API router here (one line each).

``routers`` gets what the running server has built and returns the routers to mount.
Keeping this list in one place lets features grow without editing the app factory.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from fastapi import APIRouter
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from fleet_server.commands.api import commands_router
from fleet_server.commands.store import Outgoing
from fleet_server.config import ServerSettings
from fleet_server.dashboard import dashboard_router, fleet_pages
from fleet_server.dashboard.export_api import export_router
from fleet_server.dashboard.login import login_router
from fleet_server.health.api import alerts_router
from fleet_server.health.history_api import health_router
from fleet_server.health.notify import Notifier
from fleet_server.identity.api import identity_router
from fleet_server.identity.ca import CertificateAuthority
from fleet_server.ingest.api import events_router
from fleet_server.ingest.deadletter import dead_letters_router
from fleet_server.ingest.guard_api import guard_router
from fleet_server.ingest.quarantine import Quarantine
from fleet_server.ingest.registry import Registry
from fleet_server.inventory.api import tags_router
from fleet_server.metrics import Metrics
from fleet_server.ota.serve import ota_router
from fleet_server.privacy.api import privacy_router
from fleet_server.privacy.pages import static_router as privacy_static
from fleet_server.privacy.subject_api import subject_router
from fleet_server.receipts.api import router as receipts_router
from fleet_server.rollouts.api import rollouts_routes


@dataclass(frozen=True)
class ServerContext:
    settings: ServerSettings
    engine: Engine
    sessions: sessionmaker[Session]
    registry: Registry
    metrics: Metrics
    ca: CertificateAuthority
    notifier: Notifier
    send: Callable[[Outgoing], None]  # publish a server message on the ingest connection
    quarantine: Quarantine | None = None  # issue 15: devices shut out (ingest/quarantine.py)


def routers(ctx: ServerContext) -> list[APIRouter]:
    found: list[APIRouter] = []
    found.append(identity_router(ctx))  # issue 3: tokens, revocation, commissioning, EST
    found.append(alerts_router(ctx.sessions, ctx.notifier))
    found.append(commands_router(ctx.sessions, ctx.send))
    found.append(health_router(ctx.sessions))
    found.append(login_router())
    found.append(dashboard_router(ctx.sessions, fleet_pages.SECTIONS, fleet_pages.PAGES,
                                  ctx.settings.dashboard))  # fmt: skip
    found.append(events_router(ctx.sessions))  # issue 4: events, snapshots, counts
    found.append(export_router(ctx.sessions))  # issue 19: counts CSV and NGSI-LD, events CSV
    found.append(dead_letters_router(ctx.sessions))  # issue 15: messages set aside
    if ctx.quarantine is not None:  # issue 15: quarantine, floods, refusals per device
        found.append(guard_router(ctx.quarantine))
    found.append(tags_router(ctx.sessions))  # issue 5: device tags
    found.append(ota_router(ctx))  # issue 6: TUF repository under /ota/ (docs/ota.md)
    found.append(  # issue 6: rollout campaigns, their dashboard page
        rollouts_routes(ctx.sessions, ctx.send, ctx.settings, fleet_pages.PAGES)
    )
    found.append(receipts_router(ctx.sessions))  # issue 14: event delivery and losses
    found.append(privacy_router(ctx.sessions, ctx.send, ctx.settings.privacy))  # issue 20
    found.append(subject_router(ctx.sessions, ctx.settings.privacy))  # retention, exports
    found.append(privacy_static())  # the device page's mask editor (masks.js)
    return found
