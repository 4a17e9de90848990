"""The database side of rollouts: make a campaign, record what devices report, tick.

Every function takes an open session and the clock; the callers (API, ingest, the runner)
own the transaction and publish the returned ``Outgoing`` messages after it commits.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from sqlalchemy import String, Table, and_, bindparam, column, delete, func, select, table, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from firmware import contract
from fleet_server.commands.store import Outgoing
from fleet_server.db import Device
from fleet_server.health import engine as health
from fleet_server.health.alerts import Alert
from fleet_server.health.rules import OFFLINE_RULE
from fleet_server.identity.model import Commissioning
from fleet_server.inventory import store as inventory
from fleet_server.rollouts import engine, plan
from fleet_server.rollouts import model as m
from fleet_server.rollouts.model import Campaign, CampaignDevice, RolloutClaim

log = logging.getLogger(__name__)

# sites.timezone comes with this feature's migration; the Site class is another feature's
_SITES = table("sites", column("site_id", String), column("timezone", String))


class RolloutError(Exception):
    """A rollout request that cannot be done; ``status`` is the HTTP answer for it."""

    status = 400


class NotFound(RolloutError):
    status = 404


class Conflict(RolloutError):
    status = 409


class Invalid(RolloutError):
    status = 422


@dataclass(frozen=True)
class Filter:
    tags: tuple[str, ...] = ()  # every one of them
    sites: tuple[str, ...] = ()  # any of these site ids
    hardware: str | None = None  # part of the board model, case-insensitive
    kind: str | None = None  # agent | node
    current: tuple[str, ...] = ()  # the artifact's version now is one of these
    device_ids: tuple[str, ...] = ()  # only these

    def as_dict(self) -> dict[str, Any]:
        return {"tags": list(self.tags), "sites": list(self.sites), "hardware": self.hardware,
                "kind": self.kind, "current": list(self.current),
                "device_ids": list(self.device_ids)}  # fmt: skip


@dataclass(frozen=True)
class Spec:
    """A campaign as asked for (the API checked the types and ranges)."""

    name: str
    artifact: str
    release: str
    target: str
    filter: Filter
    waves: tuple[plan.WaveSpec, ...]
    success_threshold: float = 1.0
    failure_threshold: float = 0.0
    soak_s: float = 300.0
    rate_per_min: int = 60
    windows: tuple[str, ...] = ()
    device_deadline_s: float = 3600.0
    allow_downgrade: bool = False
    trial_s: float | None = None


@dataclass
class Planned:
    """Who a campaign reaches and when: the dry-run answer, and what create stores."""

    devices: list[str]  # in plan order
    wave_ends: list[int]
    from_release: dict[str, str | None] = field(default_factory=dict)

    def wave_sizes(self) -> list[int]:
        return plan.wave_sizes(self.wave_ends)


# ---------------------------------------------------------------- reads shared by the parts
def site_of_devices(db: Session, device_ids: Sequence[str] | None = None) -> dict[str, str]:
    """device id -> site id, from each device's latest commissioning record."""
    query = select(Commissioning.device_id, Commissioning.site_id).order_by(
        Commissioning.received_at
    )
    if device_ids is not None:
        query = query.where(Commissioning.device_id.in_(list(device_ids)))
    return {str(d): str(s) for d, s in db.execute(query).all()}


def site_zones(db: Session) -> dict[str, str]:
    rows = db.execute(select(_SITES.c.site_id, _SITES.c.timezone)).all()
    return {str(s): str(tz) for s, tz in rows if tz}


def set_site_timezone(db: Session, site_id: str, tz: str | None) -> None:
    if tz is not None:
        try:
            plan.zone(tz)
        except plan.PlanError as exc:
            raise Invalid(str(exc)) from exc
    done = db.execute(update(_SITES).where(_SITES.c.site_id == site_id).values(timezone=tz))
    if not getattr(done, "rowcount", 0):
        raise NotFound(f"site {site_id} not found")


def match(db: Session, artifact: str, flt: Filter, limit: int) -> dict[str, str | None]:
    """The devices a filter selects -> the artifact's version each runs now (None: unknown)."""
    query = inventory.filter_devices(
        select(Device.id, Device.versions), flt.tags, flt.hardware, kind=flt.kind
    )
    only = set(flt.device_ids)
    if only and len(only) <= 1000:  # a long list is checked below, not as SQL parameters
        query = query.where(Device.id.in_(sorted(only)))
    rows = db.execute(query.order_by(Device.id)).all()
    sites = site_of_devices(db) if flt.sites else {}
    out: dict[str, str | None] = {}
    for dev_id, versions in rows:
        now = (versions or {}).get(artifact)
        running = str(now) if now is not None else None
        if only and dev_id not in only:
            continue
        if flt.sites and sites.get(dev_id) not in flt.sites:
            continue
        if flt.current and running not in flt.current:
            continue
        out[str(dev_id)] = running
        if len(out) > limit:
            raise Invalid(f"the filter selects more than {limit} devices")
    return out


def plan_campaign(db: Session, spec: Spec, limit: int) -> Planned:
    found = match(db, spec.artifact, spec.filter, limit)
    missing = sorted(set(spec.filter.device_ids) - set(found))
    if spec.filter.device_ids and missing:
        raise Invalid(f"unknown or filtered-out devices: {', '.join(missing[:20])}")
    # keyed by what the campaign installs and its name, so a dry run shows the same order
    order = plan.plan_order(f"{spec.artifact}/{spec.release}/{spec.name}", list(found))
    try:
        ends = plan.wave_ends(spec.waves, len(order))
    except plan.PlanError as exc:
        raise Invalid(str(exc)) from exc
    return Planned(order, ends, found)


def claimed_by(db: Session, device_ids: Sequence[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    ids = list(device_ids)
    for i in range(0, len(ids), 500):
        rows = db.execute(
            select(RolloutClaim.device_id, RolloutClaim.campaign_id).where(
                RolloutClaim.device_id.in_(ids[i : i + 500])
            )
        ).all()
        out.update({str(d): str(c) for d, c in rows})
    return out


def new_id() -> str:
    return "r-" + secrets.token_hex(6)


def create(
    db: Session, spec: Spec, who: str, now: float, *, limit: int, campaign_id: str | None = None,
    rollback_of: str | None = None, dry_run: bool = False,
) -> tuple[Campaign | None, Planned]:  # fmt: skip
    """Plan a campaign; unless ``dry_run``, store it and claim its devices (Conflict when
    another active campaign holds one)."""
    try:
        plan.parse_windows(spec.windows)
    except plan.PlanError as exc:
        raise Invalid(str(exc)) from exc
    cid = campaign_id or new_id()
    planned = plan_campaign(db, spec, limit)
    if not planned.devices and not dry_run:
        raise Invalid("the filter selects no device")
    taken = claimed_by(db, planned.devices)
    if taken:
        owners = sorted(set(taken.values()))
        raise Conflict(
            f"{len(taken)} of these devices are in active campaigns {', '.join(owners[:10])}"
        )
    if dry_run:
        return None, planned
    camp = Campaign(
        id=cid, name=spec.name, artifact=spec.artifact, release=spec.release,
        target=spec.target, allow_downgrade=spec.allow_downgrade, trial_s=spec.trial_s,
        filter=spec.filter.as_dict(),
        waves=[{"count": w.count, "percent": w.percent, "success": w.success,
                "failure": w.failure} for w in spec.waves],
        wave_ends=planned.wave_ends, success_threshold=spec.success_threshold,
        failure_threshold=spec.failure_threshold, soak_s=spec.soak_s,
        rate_per_min=spec.rate_per_min, windows=list(spec.windows),
        device_deadline_s=spec.device_deadline_s, state=m.RUNNING, wave=0, reason=None,
        rollback_of=rollback_of, created_at=now, created_by=who[:64], updated_at=now,
        closed_at=None, ignored_reports=0,
    )  # fmt: skip
    db.add(camp)
    db.flush()
    rows = [
        {"campaign_id": cid, "device_id": d, "wave": plan.wave_of(i, planned.wave_ends),
         "position": i, "state": m.PENDING, "from_release": planned.from_release.get(d),
         "cleared": False}
        for i, d in enumerate(planned.devices)
    ]  # fmt: skip
    claims = [{"device_id": d, "campaign_id": cid} for d in planned.devices]
    try:
        with db.begin_nested():
            db.execute(cast(Table, RolloutClaim.__table__).insert(), claims)
    except IntegrityError as exc:  # another worker claimed one a moment ago
        raise Conflict("some of these devices were just claimed by another campaign") from exc
    db.execute(_TABLE.insert(), rows)
    return camp, planned


# ---------------------------------------------------------------- messages
def desired_message(camp: Campaign, device_id: str, now: float) -> Outgoing:
    body: dict[str, Any] = {"campaign": camp.id, "artifact": camp.artifact,
                            "release": camp.release, "target": camp.target}  # fmt: skip
    if camp.allow_downgrade:
        body["allow_downgrade"] = True
    if camp.trial_s is not None:
        body["trial_s"] = camp.trial_s
    topic, payload, qos, retain = contract.encode("update_desired", device_id, body, now)
    return Outgoing(topic, payload, qos, retain)


def clear_message(device_id: str) -> Outgoing:
    """An empty retained message: the broker forgets the desired update."""
    return Outgoing(contract.topic(device_id, "update_desired"), b"", 1, True)


def apply_update_state(db: Session, device_id: str, body: dict[str, Any], now: float) -> bool:
    """Record a device's ``update_state`` (called in the ingest transaction).

    It counts only for the device's row in that campaign, for that campaign's artifact and
    release, and only when it moves the device forward (pending -> downloading -> installing
    -> trial -> committed / rolled_back / failed). Anything else is ignored, counted on the
    campaign when there is one, and logged. Returns whether it was recorded.
    """
    cid = str(body["campaign"])
    row = db.get(CampaignDevice, (cid, device_id), with_for_update=True)
    camp = db.get(Campaign, cid) if row is not None else None
    state = str(body["state"])
    if row is None or camp is None:
        log.info("update_state of %s for campaign %s ignored: not in it", device_id, cid[:40])
        return False
    if row.state == state:
        return False  # a repeat (QoS 1 redelivery, or "committed" again): nothing new
    why = None
    if body["artifact"] != camp.artifact or body["release"] != camp.release:
        why = f"for {body['artifact']} {body['release']}, the campaign is {camp.release}"
    elif m.RANK[state] <= m.RANK[row.state]:
        why = f"{row.state} -> {state} goes backwards"
    if why is not None:
        log.info("update_state of %s for campaign %s ignored: %s", device_id, cid[:40], why)
        db.execute(
            update(Campaign).where(Campaign.id == camp.id)
            .values(ignored_reports=Campaign.ignored_reports + 1)
        )  # fmt: skip
        return False
    row.state = state
    row.state_at = now
    if state == m.COMMITTED:
        row.committed_at = now
    progress = body.get("progress")
    if isinstance(progress, int | float):
        row.progress = float(progress)
    attempt = body.get("attempt")
    if isinstance(attempt, int):
        row.attempt = attempt
    error = body.get("error")
    if isinstance(error, str) and error:
        row.error = error[:512]
    return True


# ---------------------------------------------------------------- the tick
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


def release_claims(db: Session, cid: str) -> None:
    """Give back the devices of an ended campaign that are done with it."""
    done = select(CampaignDevice.device_id).where(
        CampaignDevice.campaign_id == cid, CampaignDevice.state.in_(m.TERMINAL)
    )
    db.execute(
        delete(RolloutClaim).where(
            RolloutClaim.campaign_id == cid, RolloutClaim.device_id.in_(done)
        )
    )


def _event(camp: Campaign, what: str, message: str, now: float) -> dict[str, Any]:
    return {"type": "rollout", "campaign": camp.id, "name": camp.name, "event": what,
            "state": camp.state, "wave": camp.wave + 1, "message": message,
            "at": now}  # fmt: skip


def open_campaigns(db: Session) -> list[str]:
    return list(
        db.scalars(
            select(Campaign.id).where(Campaign.closed_at.is_(None)).order_by(Campaign.created_at)
        ).all()
    )


def lock_campaign(db: Session, cid: str) -> Campaign:
    camp = db.get(Campaign, cid, with_for_update=True)
    if camp is None:
        raise NotFound(f"campaign {cid} not found")
    return camp
