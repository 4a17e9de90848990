"""Dashboard pages (HTML, served under /ui by the API app)."""

from __future__ import annotations

import json
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from fleet_server.commands import store as cmds
from fleet_server.commands.store import Command
from fleet_server.dashboard import i18n, problems
from fleet_server.dashboard import inventory_view as inv
from fleet_server.dashboard.charts import Series, time_chart
from fleet_server.dashboard.env import locale_dependency, make_env, safe_next
from fleet_server.dashboard.login import ui_reader
from fleet_server.dashboard.settings import DashboardSettings
from fleet_server.db import Device, Heartbeat
from fleet_server.health.alerts import ACTIVE, Alert
from fleet_server.health.rules import OFFLINE_RULE
from fleet_server.inventory.store import filter_devices, hardware_model, tags_of

HERE = Path(__file__).resolve().parent
NAV = [("/ui/", "Overview"), ("/ui/devices", "Devices"), ("/ui/alerts", "Alerts"),
       ("/ui/sites", "Sites"), ("/ui/counts", "Traffic"), ("/ui/events", "Events")]  # fmt: skip
CHARTS = [
    ("cpu_pct", "CPU", "%"),
    ("temp_c", "Temperature", " °C"),
    ("mem_used_pct", "Memory", "%"),
    ("disk_used_pct", "Disk", "%"),
    ("fps", "Frames/s", ""),
    ("infer_ms", "Inference", " ms"),
    ("mem_free", "Free heap", " B"),
]
HISTORY_S = 24 * 3600
PAGE = 100


@dataclass(frozen=True)
class Section:
    title: str
    html: str  # already escaped markup


# A feature adds a part to the device page: (session, device id) -> Section or None
DeviceSection = Callable[[Session, str], Section | None]
# A feature adds a page: (href, nav name, render(session) -> (title, html))
ExtraPage = tuple[str, str, Callable[[Session], tuple[str, str]]]


def _when(ts: float | None) -> str:
    return i18n.when(ts)


def degraded_ids(db: Session) -> set[str]:
    rows = db.scalars(
        select(Alert.device_id).where(Alert.state.in_(ACTIVE), Alert.rule != OFFLINE_RULE)
    ).all()
    return set(rows)


def shown_state(dev: Device, degraded: set[str]) -> str:
    return _shown(dev.id, dev.state, degraded)


def _shown(device_id: str, state: str, degraded: set[str]) -> str:
    return "degraded" if state == "online" and device_id in degraded else state


def _versions(v: dict[str, Any] | None) -> str:
    return ", ".join(f"{k} {val}" for k, val in sorted((v or {}).items()))


def _alert_rows(alerts: Sequence[Alert]) -> list[dict[str, Any]]:
    return [
        {"id": a.id, "device_id": a.device_id, "rule": a.rule, "severity": a.severity,
         "state": a.state, "message": a.message, "opened": a.opened_at}
        for a in alerts
    ]  # fmt: skip


def dashboard_router(
    sessions: sessionmaker[Session],
    sections: Sequence[DeviceSection] = (),
    pages: Sequence[ExtraPage] = (),
    settings: DashboardSettings | None = None,
) -> APIRouter:
    conf = settings or DashboardSettings()
    env = make_env()
    nav = NAV + [(href, name) for href, name, _render in pages]
    router = APIRouter(
        prefix="/ui", include_in_schema=False,
        dependencies=[Depends(ui_reader), Depends(locale_dependency(conf))],
    )  # fmt: skip

    def render(template: str, here: str, **ctx: Any) -> HTMLResponse:
        html = env.get_template(template).render(
            nav=nav, here=here, refresh_s=conf.refresh_s, **ctx
        )
        return HTMLResponse(html)

    @router.get("/", response_class=HTMLResponse)
    def overview() -> HTMLResponse:
        with sessions() as db:
            ctx = overview_context(db, conf.cert_warn_days)
        return render("overview.html", "/ui/", title=i18n.t("Overview"), **ctx)

    @router.get("/lang/{code}")
    def switch_language(
        code: str, next: Annotated[str, Query(max_length=2000)] = "/ui/"
    ) -> RedirectResponse:
        if code not in i18n.LANGUAGES:
            raise HTTPException(status_code=404, detail="no such language")
        resp = RedirectResponse(safe_next(next), status_code=303)
        resp.set_cookie(i18n.COOKIE, code, max_age=400 * 86400, samesite="lax")
        return resp

    @router.get("/devices", response_class=HTMLResponse)
    def devices(
        q: Annotated[str, Query(max_length=64)] = "",
        state: Annotated[str, Query(pattern="^(|online|offline|degraded|unknown)$")] = "",
        kind: Annotated[str, Query(pattern="^(|agent|node)$")] = "",
        offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
        tag: Annotated[str, Query(max_length=400)] = "",
        hardware: Annotated[str, Query(max_length=64)] = "",
    ) -> HTMLResponse:
        with sessions() as db:
            ctx = device_list_context(db, q, state, kind, offset, tag, hardware)
        return render("devices.html", "/ui/devices", title=i18n.t("Devices"), **ctx)

    @router.get("/devices/{device_id}", response_class=HTMLResponse)
    def device(device_id: str) -> HTMLResponse:
        with sessions() as db:
            ctx = device_context(db, device_id, sections)
        if ctx is None:
            raise HTTPException(status_code=404, detail=f"device {device_id} not found")
        return render("device.html", "/ui/devices", title=device_id, **ctx)

    @router.get("/alerts", response_class=HTMLResponse)
    def alerts_page(all: Annotated[bool, Query()] = False) -> HTMLResponse:
        with sessions() as db:
            query = select(Alert).order_by(Alert.opened_at.desc()).limit(500)
            if not all:
                query = query.where(Alert.state.in_(ACTIVE))
            rows = db.scalars(query).all()
        return render("alerts.html", "/ui/alerts", title=i18n.t("Alerts"), alerts=_alert_rows(rows),
                      show_all=all)  # fmt: skip

    from fleet_server.dashboard.ops_views import add_ops_routes  # (it reads this module)

    add_ops_routes(router, sessions, render, conf)
    for href, name, make_page in pages:
        router.add_api_route(
            href.removeprefix("/ui"), _page_view(sessions, render, href, name, make_page),
            response_class=HTMLResponse, methods=["GET"],
        )  # fmt: skip

    return router


def mount_static(app: FastAPI) -> None:
    """The dashboard's CSS and JavaScript, from this package (never a CDN)."""
    app.mount("/ui/static", StaticFiles(directory=HERE / "static"), name="ui-static")

    @app.get("/", include_in_schema=False)
    def root() -> RedirectResponse:
        return RedirectResponse("/ui/")


def _page_view(
    sessions: sessionmaker[Session],
    render: Callable[..., HTMLResponse],
    href: str,
    name: str,
    make_page: Callable[[Session], tuple[str, str]],
) -> Callable[[], HTMLResponse]:
    def view() -> HTMLResponse:
        with sessions() as db:
            title, html = make_page(db)
        return render("page.html", href, title=title or name, content=html)

    return view


def overview_context(db: Session, cert_warn_days: float = 30.0) -> dict[str, Any]:
    now = time.time()
    # only the columns it needs, as plain rows: no ORM objects, no heartbeat JSON parsed
    rows = db.execute(select(Device.id, Device.state, Device.kind, Device.versions,
                             Device.hardware)).all()  # fmt: skip
    degraded = degraded_ids(db)
    active = db.scalar(select(func.count()).where(Alert.state.in_(ACTIVE))) or 0
    counts: Counter[str] = Counter(
        "degraded" if r.state == "online" and r.id in degraded else r.state for r in rows
    )
    versions: Counter[tuple[str, str]] = Counter(
        (k, str(v)) for r in rows for k, v in (r.versions or {}).items()
        if k in ("agent", "firmware", "model")
    )  # fmt: skip
    boards: Counter[tuple[str, str]] = Counter((r.kind, hardware_model(r.hardware)) for r in rows)
    return {
        "total": len(rows),
        "counts": {s: counts.get(s, 0) for s in ("online", "degraded", "offline")},
        "active_alerts": active,
        "versions": sorted(versions.items()),
        "hardware": sorted(boards.items(), key=lambda item: (-item[1], item[0])),
        "problems": problems.gather(db, now, cert_warn_days),
        "kinds": problems.KINDS,
    }


def device_list_context(
    db: Session, q: str, state: str, kind: str, offset: int, tag: str = "", hardware: str = ""
) -> dict[str, Any]:
    tags, bad_tags = inv.parse_tags(tag)
    # ids and states of all that match (plain rows), whole objects for the page shown only
    query = filter_devices(select(Device.id, Device.state).order_by(Device.id), tags,
                           hardware.strip() or None)  # fmt: skip
    if q:
        query = query.where(Device.id.contains(q.lower(), autoescape=True))
    if kind:
        query = query.where(Device.kind == kind)
    if state in ("online", "degraded"):
        query = query.where(Device.state == "online")
    elif state:
        query = query.where(Device.state == state)
    found = db.execute(query).all()
    degraded = degraded_ids(db)
    alerts = Counter(db.scalars(select(Alert.device_id).where(Alert.state.in_(ACTIVE))).all())
    if state:
        found = [r for r in found if _shown(r.id, r.state, degraded) == state]
    ids = [r.id for r in found[offset : offset + PAGE]]
    page = sorted(db.scalars(select(Device).where(Device.id.in_(ids))).all(), key=lambda d: d.id)
    tags_on = tags_of(db, [d.id for d in page])
    rows = [
        {"id": d.id, "kind": d.kind, "shown_state": shown_state(d, degraded),
         "last_seen": d.last_seen, "versions": _versions(d.versions),
         "alerts": alerts.get(d.id, 0), "tags": tags_on[d.id],
         "model": hardware_model(d.hardware)}
        for d in page
    ]  # fmt: skip
    more = ""
    if offset + PAGE < len(found):
        params = {"q": q, "state": state, "kind": kind, "offset": offset + PAGE, "tag": tag,
                  "hardware": hardware}  # fmt: skip
        more = "/ui/devices?" + urllib.parse.urlencode(params)
    return {"rows": rows, "total": len(found), "q": q, "state": state, "kind": kind, "more": more,
            "tag": tag, "hardware": hardware, "bad_tags": bad_tags}  # fmt: skip


def device_context(
    db: Session, device_id: str, sections: Sequence[DeviceSection]
) -> dict[str, Any] | None:
    dev = db.get(Device, device_id)
    if dev is None:
        return None
    since = time.time() - HISTORY_S
    beats = db.scalars(
        select(Heartbeat).where(Heartbeat.device_id == device_id, Heartbeat.ts >= since)
        .order_by(Heartbeat.ts.desc()).limit(720)
    ).all()  # fmt: skip
    alerts = db.scalars(
        select(Alert).where(Alert.device_id == device_id).order_by(Alert.opened_at.desc()).limit(50)
    ).all()
    commands = db.scalars(
        select(Command).where(Command.device_id == device_id)
        .order_by(Command.created_at.desc()).limit(20)
    ).all()  # fmt: skip
    extra = [s for s in (make(db, device_id) for make in sections) if s is not None]
    degraded = degraded_ids(db)
    charts = []
    now = time.time()
    gap = 3 * (dev.heartbeat_interval_s or 60)  # a missing heartbeat or more: a gap
    for key, name, unit in CHARTS:
        points = [(b.ts, float(b.body[key])) for b in beats
                  if isinstance(b.body.get(key), int | float)]  # fmt: skip
        if points:
            t0 = max(min(p[0] for p in points), now - HISTORY_S)
            series = [Series(i18n.t(name), points)]
            charts.append(time_chart(i18n.t(name), series, unit.strip(), t0, now, gap,
                                     width=420, height=170, chart_id=f"chart-{key}"))  # fmt: skip
    if not charts:
        charts.append(time_chart(i18n.t("Health"), [], "", now - HISTORY_S, now, 1))
    d = {"id": dev.id, "kind": dev.kind, "shown_state": shown_state(dev, degraded),
         "state_reason": dev.state_reason, "last_seen": dev.last_seen,
         "interval": dev.heartbeat_interval_s, "gaps": dev.seq_gaps}  # fmt: skip
    command_rows = [
        {"at": c.created_at, "cmd": c.cmd, "state": c.state, "by": c.requested_by,
         "outcome": c.error or (json.dumps(c.result) if c.result else "")}
        for c in commands
    ]  # fmt: skip
    return {
        "d": d, "charts": charts, "sections": extra, "alerts": _alert_rows(alerts),
        "commands": command_rows, "command_names": cmds.KNOWN,
        "last_heartbeat": json.dumps(dev.last_heartbeat, indent=2, sort_keys=True),
        "tags": tags_of(db, [dev.id])[dev.id], "hardware": inv.hardware_rows(dev.hardware),
    }  # fmt: skip
