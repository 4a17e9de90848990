"""One engine step of a campaign, on the database: read its device rows (with each soaking
device's health events and each device's local time zone) into the engine's views, call
``engine.decide`` and carry the decision out (row updates, the messages to publish, the
campaign's state and events). The rules themselves are in ``fleet_server.rollouts.engine``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, cast

from sqlalchemy import Table, and_, bindparam, func, select, update
from sqlalchemy.orm import Session

from fleet_server.commands.store import Outgoing
from fleet_server.db import Device
from fleet_server.health import engine as health
from fleet_server.health.alerts import Alert
from fleet_server.health.rules import OFFLINE_RULE
from fleet_server.rollouts import engine, plan
from fleet_server.rollouts import model as m
from fleet_server.rollouts.model import Campaign, CampaignDevice
from fleet_server.rollouts.store import (
    clear_message,
    desired_message,
    release_claims,
    site_of_devices,
    site_zones,
)


@dataclass
class TickResult:
    out: list[Outgoing] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)  # campaign state changes


def _num(value: object, default: float) -> float:
    return float(value) if isinstance(value, int | float) else default


def policy_of(camp: Campaign) -> engine.Policy:
    waves = camp.waves or []
    return engine.Policy(
        state=camp.state,
        wave=camp.wave,
        wave_ends=tuple(camp.wave_ends),
        success=tuple(_num(w.get("success"), camp.success_threshold) for w in waves),
        failure=tuple(_num(w.get("failure"), camp.failure_threshold) for w in waves),
        soak_s=camp.soak_s,
        rate_per_min=camp.rate_per_min,
        windows=plan.parse_windows(camp.windows),
        device_deadline_s=camp.device_deadline_s,
    )


def _views(db: Session, camp: Campaign, default_tz: str) -> list[engine.DeviceView]:
    c = CampaignDevice
    rows = db.execute(
        select(c.device_id, c.wave, c.position, c.state, c.asked_at, c.committed_at, c.healthy,
               c.cleared, Device.state, Device.state_changed_at)
        .join(Device, Device.id == c.device_id, isouter=True)
        .where(c.campaign_id == camp.id)
    ).all()  # fmt: skip
    soaking = {
        str(r[0]): (float(r[4] or r[5]), float(r[5]))
        for r in rows
        if r[3] == m.COMMITTED and r[6] is None and r[5] is not None
    }
    offline_at, degraded_at = _health_events(db, soaking, camp.soak_s)
    need_tz = bool(camp.windows) and camp.state == m.RUNNING
    sites = site_of_devices(db) if need_tz else {}
    zones = site_zones(db) if need_tz else {}
    return [
        engine.DeviceView(
            id=dev_id, wave=wave, position=position, state=state, asked_at=asked_at,
            committed_at=committed_at, healthy=healthy, cleared=cleared,
            offline_at=_offline_at(dev_id, soaking, offline_at, dev_state, changed, camp.soak_s),
            degraded_at=degraded_at.get(dev_id),
            tz=zones.get(sites.get(dev_id, ""), default_tz),
        )
        for (dev_id, wave, position, state, asked_at, committed_at, healthy, cleared, dev_state,
             changed) in rows
    ]  # fmt: skip


def _health_events(
    db: Session, soaking: dict[str, tuple[float, float]], soak_s: float
) -> tuple[dict[str, float], dict[str, float]]:
    """From the alert history: per soaking device, the first offline alert since its commit
    and the first other health alert since it was asked (both only up to the soak's end)."""
    offline: dict[str, float] = {}
    degraded: dict[str, float] = {}
    if not soaking:
        return offline, degraded
    since = min(asked for asked, _committed in soaking.values())
    for dev_id, rule, opened in db.execute(
        select(Alert.device_id, Alert.rule, Alert.opened_at).where(Alert.opened_at >= since)
    ).all():
        got = soaking.get(str(dev_id))
        if got is None:
            continue
        asked, committed = got
        if opened > committed + soak_s:
            continue
        if rule == OFFLINE_RULE:
            if opened >= committed:
                offline[str(dev_id)] = min(offline.get(str(dev_id), opened), float(opened))
        elif opened >= asked:
            degraded[str(dev_id)] = min(degraded.get(str(dev_id), opened), float(opened))
    return offline, degraded


def _offline_at(
    dev_id: str, soaking: dict[str, tuple[float, float]], from_alerts: dict[str, float],
    dev_state: str | None, changed: float | None, soak_s: float,
) -> float | None:  # fmt: skip
    """When a soaking device was seen offline since its commit (None: not within the soak).

    Offline now: since its last change. Online again with a change after the commit that
    falls inside the soak: it was away in between. Else the alert history says."""
    got = soaking.get(dev_id)
    if got is None:
        return None
    committed = got[1]
    seen = [from_alerts[dev_id]] if dev_id in from_alerts else []
    if dev_state != health.ONLINE:
        seen.append(max(changed or committed, committed))
    elif changed is not None and committed < changed <= committed + soak_s:
        seen.append(changed)
    return min(seen) if seen else None


_TABLE = cast(Table, CampaignDevice.__table__)
_ROW = _TABLE.c


def _where_row(cid: str) -> Any:
    return and_(_ROW.campaign_id == cid, _ROW.device_id == bindparam("b_id"))


def tick_campaign(
    db: Session, camp: Campaign, now: float, default_tz: str, max_out: int = 500
) -> TickResult:
    """One engine step for a campaign; at most ``max_out`` messages (asks first, then
    clears), the rest on the next ticks."""
    res = TickResult()
    views = _views(db, camp, default_tz)
    decision = engine.decide(policy_of(camp), views, now)
    decision.ask = decision.ask[:max_out]
    decision.clear = decision.clear[: max(0, max_out - len(decision.ask))]
    cid = camp.id
    t = _TABLE
    if decision.fail:
        db.execute(
            update(t).where(_where_row(cid), _ROW.state.notin_(m.TERMINAL))
            .values(state=m.FAILED, state_at=now, error=bindparam("b_err")),
            [{"b_id": d, "b_err": why} for d, why in decision.fail],
        )  # fmt: skip
    if decision.health:
        db.execute(
            update(t).where(_where_row(cid), _ROW.state == m.COMMITTED)
            .values(healthy=bindparam("b_ok"), error=bindparam("b_err")),
            [{"b_id": d, "b_ok": ok, "b_err": why} for d, ok, why in decision.health],
        )  # fmt: skip
    if decision.skip:
        db.execute(
            update(t).where(_where_row(cid), _ROW.state == m.PENDING, _ROW.asked_at.is_(None))
            .values(state=m.SKIPPED, state_at=now, error=bindparam("b_err")),
            [{"b_id": d, "b_err": why} for d, why in decision.skip],
        )  # fmt: skip
    if decision.ask:
        db.execute(
            update(t).where(_where_row(cid)).values(asked_at=now),
            [{"b_id": d} for d in decision.ask],
        )
        res.out += [desired_message(camp, d, now) for d in decision.ask]
    if decision.clear:
        db.execute(update(t).where(_where_row(cid)).values(cleared=True),
                   [{"b_id": d} for d in decision.clear])  # fmt: skip
        res.out += [clear_message(d) for d in decision.clear]
    if decision.wave is not None:
        camp.wave = decision.wave
        camp.updated_at = now
        if camp.wave < len(camp.wave_ends):
            res.events.append(_event(camp, "wave", f"wave {camp.wave + 1} started", now))
    if decision.state is not None:
        camp.state = decision.state
        camp.reason = decision.reason
        camp.updated_at = now
        res.events.append(_event(camp, camp.state, decision.reason or "", now))
    if camp.state in (m.CANCELLED, m.FINISHED):
        release_claims(db, cid)
        open_rows = db.scalar(
            select(func.count()).select_from(CampaignDevice).where(
                CampaignDevice.campaign_id == cid,
                CampaignDevice.state.notin_(m.TERMINAL) | (
                    CampaignDevice.state.in_((m.COMMITTED, m.FAILED, m.ROLLED_BACK))
                    & CampaignDevice.cleared.is_(False)),
            )
        )  # fmt: skip
        if not open_rows:
            camp.closed_at = now
    return res


def _event(camp: Campaign, what: str, message: str, now: float) -> dict[str, Any]:
    return {"type": "rollout", "campaign": camp.id, "name": camp.name, "event": what,
            "state": camp.state, "wave": camp.wave + 1, "message": message,
            "at": now}  # fmt: skip
