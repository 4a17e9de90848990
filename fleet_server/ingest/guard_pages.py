"""The device page's "Quarantine" part (issue 15): whether the device is shut out, its
flooding alerts and dead letters, and the operator's buttons (app.js calls the API)."""

from __future__ import annotations

import datetime as dt
from html import escape

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from fleet_server.dashboard.i18n import t
from fleet_server.dashboard.views import Section
from fleet_server.health.alerts import ACTIVE, Alert
from fleet_server.ingest.deadletter import DeadLetter
from fleet_server.ingest.flood import FLOODING_RULE
from fleet_server.ingest.quarantine import QuarantinedDevice


def _when(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def quarantine_section(db: Session, device_id: str) -> Section | None:
    row = db.get(QuarantinedDevice, device_id)
    flooding = db.scalar(
        select(func.count())
        .select_from(Alert)
        .where(Alert.device_id == device_id, Alert.rule == FLOODING_RULE, Alert.state.in_(ACTIVE))
    )
    dead = db.scalar(
        select(func.count()).select_from(DeadLetter).where(DeadLetter.device_id == device_id)
    )
    dev = escape(device_id)
    if row is not None:
        state = escape(t("quarantined since {when} by {who}: {why}", when=_when(row.since),
                         who=row.by, why=row.reason))  # fmt: skip
        lines = [
            f'<span id="quarantine-state" class="state state-offline">{state}</span>',
            f'<button id="release" data-action="release" data-device="{dev}">'
            f"{escape(t('release'))}</button>",
        ]
    else:
        lines = [
            f'<span id="quarantine-state">{escape(t("not quarantined"))}</span>',
            f'<button id="quarantine" data-action="quarantine" data-device="{dev}">'
            f"{escape(t('quarantine'))}</button>",
        ]
    if flooding:
        lines.append(f'<span class="state state-offline">{escape(t("flooding now"))}</span>')
    if dead:
        href = f"/api/dead-letters?device_id={dev}"
        lines.append(f'<a href="{href}">{escape(t("{n} dead letters", n=dead))}</a>')
    return Section("Quarantine", "<p>" + " · ".join(lines) + "</p>")
