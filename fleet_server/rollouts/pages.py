"""Dashboard parts of rollouts: the campaigns list, a campaign's page (waves, counts, its
devices, and pause/resume/cancel/roll back for operators) and the device page's section."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from html import escape
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query
from fastapi.responses import HTMLResponse
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from fleet_server.access.audit import Actor
from fleet_server.access.auth import ADMIN, OPERATOR
from fleet_server.dashboard.env import locale_dependency, make_env
from fleet_server.dashboard.login import ui_reader
from fleet_server.dashboard.settings import DashboardSettings
from fleet_server.dashboard.views import NAV, ExtraPage, Section
from fleet_server.rollouts import actions, plan
from fleet_server.rollouts import model as m
from fleet_server.rollouts.model import Campaign

PAGE = 200


def _when(ts: float | None) -> str:
    if ts is None:
        return "—"
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _state(state: str) -> str:
    return f'<span class="state rollout-{escape(state)}">{escape(state)}</span>'


def campaigns_page(db: Session) -> tuple[str, str]:
    rows = db.scalars(select(Campaign).order_by(Campaign.created_at.desc()).limit(200)).all()
    cells = []
    for c in rows:
        total, _waves = actions.counts(db, c.id)
        done = total[m.COMMITTED]
        bad = total[m.FAILED] + total[m.ROLLED_BACK]
        cells.append(
            f'<tr id="campaign-{escape(c.id)}"><td><a href="/ui/rollouts/{escape(c.id)}">'
            f"{escape(c.name)}</a></td><td>{escape(c.artifact)} {escape(c.release)}</td>"
            f"<td>{_state(c.state)}</td><td>{c.wave + 1} of {len(c.wave_ends)}</td>"
            f"<td>{done} / {sum(total.values())}</td><td>{bad}</td>"
            f"<td>{_when(c.created_at)} by {escape(c.created_by)}</td></tr>"
        )
    body = "".join(cells) or '<tr><td colspan="7" class="muted">no campaigns yet</td></tr>'
    return "Rollouts", (
        '<table id="campaigns"><tr><th>campaign</th><th>release</th><th>state</th>'
        "<th>wave</th><th>committed</th><th>failed</th><th>created</th></tr>"
        f"{body}</table>"
    )


def campaign_html(db: Session, camp: Campaign, can_act: bool, state: str, offset: int) -> str:
    total, per_wave = actions.counts(db, camp.id)
    sizes = plan.wave_sizes(camp.wave_ends)
    head = (
        f'<p id="campaign-state">{_state(camp.state)} · {escape(camp.artifact)} '
        f"{escape(camp.release)} · target <code>{escape(camp.target)}</code> · "
        f"wave {min(camp.wave, len(sizes) - 1) + 1} of {len(sizes)}"
        + (f" · {escape(camp.reason)}" if camp.reason else "")
        + (f" · rollback of <a href='/ui/rollouts/{escape(camp.rollback_of)}'>"
           f"{escape(camp.rollback_of)}</a>" if camp.rollback_of else "")
        + "</p>"
        f"<p>success ≥ {camp.success_threshold:.0%} healthy after {camp.soak_s:.0f} s · "
        f"halt above {camp.failure_threshold:.0%} failed · {camp.rate_per_min} devices/min · "
        f"windows {escape(', '.join(camp.windows) or 'any time')} · "
        f"created {_when(camp.created_at)} by {escape(camp.created_by)} · "
        f"{camp.ignored_reports} reports ignored</p>"
    )  # fmt: skip
    buttons = ""
    if can_act:
        acts = {
            m.RUNNING: ("pause", "cancel", "rollback"),
            m.PAUSED: ("resume", "cancel", "rollback"),
            m.HALTED: ("cancel", "rollback"),
        }.get(camp.state, ("rollback",))
        buttons = "<p>" + " ".join(
            f'<button id="rollout-{a}" data-action="rollout" data-campaign="{escape(camp.id)}" '
            f'data-what="{a}">{a}</button>' for a in acts
        ) + "</p>"  # fmt: skip
    states = m.DEVICE_STATES
    wave_rows = "".join(
        f'<tr><td>{i + 1}{" (canary)" if i == 0 and len(sizes) > 1 else ""}</td><td>{size}</td>'
        + "".join(f"<td>{(per_wave[i] if i < len(per_wave) else {}).get(s, 0)}</td>"
                  for s in [*states, "healthy", "unhealthy"])
        + "</tr>"
        for i, size in enumerate(sizes)
    )  # fmt: skip
    waves = (
        '<h2>Waves</h2><table id="waves"><tr><th>wave</th><th>devices</th>'
        + "".join(f"<th>{escape(s)}</th>" for s in [*states, "healthy", "unhealthy"])
        + f"</tr>{wave_rows}<tr><td>all</td><td>{sum(sizes)}</td>"
        + "".join(f"<td>{total.get(s, 0)}</td>" for s in states)
        + "<td></td><td></td></tr></table>"
    )
    rows, count = actions.device_rows(db, camp.id, state or None, None, PAGE, offset)
    device_rows = "".join(
        f'<tr id="dev-{escape(r.device_id)}"><td><a href="/ui/devices/{escape(r.device_id)}">'
        f"{escape(r.device_id)}</a></td><td>{r.wave + 1}</td><td>{_state(r.state)}</td>"
        f"<td>{escape(r.from_release or '')}</td><td>{_when(r.asked_at)}</td>"
        f"<td>{_when(r.state_at)}</td>"
        f"<td>{'' if r.healthy is None else ('healthy' if r.healthy else 'unhealthy')}</td>"
        f"<td>{escape(r.error or '')}</td></tr>"
        for r in rows
    )
    more = (
        f'<p><a id="more" href="/ui/rollouts/{escape(camp.id)}?state={escape(state)}'
        f'&offset={offset + PAGE}">next {PAGE}</a></p>'
        if offset + PAGE < count
        else ""
    )
    options = "".join(
        f'<a href="/ui/rollouts/{escape(camp.id)}?state={s}">{s}</a> ' for s in states
    )
    devices = (
        f"<h2>Devices ({count}{' ' + escape(state) if state else ''})</h2><p>{options}</p>"
        '<table id="rollout-devices"><tr><th>device</th><th>wave</th><th>state</th>'
        "<th>from</th><th>asked</th><th>last change</th><th>after commit</th><th>error</th>"
        f"</tr>{device_rows}</table>{more}"
    )
    return head + buttons + waves + devices


def update_section(db: Session, device_id: str) -> Section | None:
    """The device page's "Update": its latest campaign and where it stands in it."""
    found = actions.latest_for_device(db, device_id)
    if found is None:
        return None
    camp, row = found
    after = "" if row.healthy is None else (" · healthy" if row.healthy else " · unhealthy")
    return Section(
        "Update",
        f'<p id="update-state"><a href="/ui/rollouts/{escape(camp.id)}">{escape(camp.name)}</a>'
        f" · {escape(camp.artifact)} {escape(row.from_release or '?')} → "
        f"{escape(camp.release)} · {_state(row.state)}{after} · since {_when(row.state_at)}"
        + (f" · {escape(row.error)}" if row.error else "")
        + "</p>",
    )


def rollout_pages_router(
    sessions: sessionmaker[Session], pages: Sequence[ExtraPage] = (),
    dashboard: DashboardSettings | None = None,
) -> APIRouter:  # fmt: skip
    """The campaign page, /ui/rollouts/<id> (the list is an ExtraPage of the dashboard)."""
    env = make_env()
    nav = NAV + [(href, name) for href, name, _render in pages]
    locale = locale_dependency(dashboard or DashboardSettings())
    router = APIRouter(prefix="/ui", include_in_schema=False, dependencies=[Depends(locale)])

    @router.get("/rollouts/{cid}", response_class=HTMLResponse)
    def campaign_page(
        cid: str,
        who: Annotated[Actor, Depends(ui_reader)],
        state: Annotated[str, Query(max_length=16)] = "",
        offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
    ) -> HTMLResponse:
        if state and state not in m.DEVICE_STATES:
            raise HTTPException(status_code=404, detail=f"no device state {state}")
        with sessions() as db:
            camp = db.get(Campaign, cid)
            if camp is None:
                raise HTTPException(status_code=404, detail=f"campaign {cid} not found")
            html = campaign_html(db, camp, who.role in (OPERATOR, ADMIN), state, offset)
            title = f"Rollout {camp.name}"
        page = env.get_template("page.html").render(
            nav=nav, here="/ui/rollouts", title=title, content=html
        )
        return HTMLResponse(page)

    return router


PAGES: list[ExtraPage] = [("/ui/rollouts", "Rollouts", campaigns_page)]
