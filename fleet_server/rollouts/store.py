"""The database side of rollouts: the package's errors, making a campaign (which devices a
filter selects, in which order and waves, claimed for it), the messages to devices, what
devices report, and the claims and locks the tick and the operator actions share.

Every function takes an open session and the clock; the callers (API, ingest, the runner)
own the transaction and publish the returned ``Outgoing`` messages after it commits. The
tick itself (rows -> engine -> writes) is in ``fleet_server.rollouts.tick``.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from sqlalchemy import String, Table, column, delete, select, table, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from firmware import contract
from fleet_server.commands.store import Outgoing
from fleet_server.db import Device
from fleet_server.identity.model import Commissioning
from fleet_server.ingest.gate import RefusalLog, Refused
from fleet_server.inventory import store as inventory
from fleet_server.rollouts import model as m
from fleet_server.rollouts import plan
from fleet_server.rollouts.model import Campaign, CampaignDevice, RolloutClaim

log = logging.getLogger(__name__)
# ignored update_state reports are logged like refusals (issue 15): the first of a device at
# once, then one summary per interval, the device's strings quoted (no forged log lines)
_IGNORED_LOG = RefusalLog()


def _ignored(device_id: str, cid: str, why: str) -> None:
    detail = f"update_state for campaign {cid[:40]!r} ignored: {why}"
    _IGNORED_LOG.note(Refused("update_state_ignored", device_id, detail), 0)


# sites.timezone comes with this feature's migration; the Site class is another feature's
_SITES = table("sites", column("site_id", String), column("timezone", String))
_TABLE = cast(Table, CampaignDevice.__table__)


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
        _ignored(device_id, cid, "not in it")
        return False
    if row.state == state:
        return False  # a repeat (QoS 1 redelivery, or "committed" again): nothing new
    why = None
    if body["artifact"] != camp.artifact or body["release"] != camp.release:
        why = (
            f"for {body['artifact']} {str(body['release'])[:64]!r}, the campaign is {camp.release}"
        )
    elif m.RANK[state] <= m.RANK[row.state]:
        why = f"{row.state} -> {state} goes backwards"
    if why is not None:
        _ignored(device_id, cid, why)
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


# ---------------------------------------------------------------- claims and locks
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
