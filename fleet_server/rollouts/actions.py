"""Operator actions on a campaign (pause, resume, cancel, roll back), the release check
against the TUF repository, and the read models the API and dashboard show."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from fleet_server.commands.store import Outgoing
from fleet_server.db import page
from fleet_server.ota import release as rel
from fleet_server.ota.published import PublishedRepo, RepoError
from fleet_server.rollouts import model as m
from fleet_server.rollouts import plan, store
from fleet_server.rollouts.model import Campaign, CampaignDevice
from fleet_server.rollouts.store import Conflict, Invalid, Spec

ReleaseCheck = Callable[[str, str, str], None]  # (artifact, release, target) -> or Invalid


def pause(db: Session, cid: str, now: float) -> Campaign:
    camp = store.lock_campaign(db, cid)
    if camp.state != m.RUNNING:
        raise Conflict(f"campaign {cid} is {camp.state}; only a running one can pause")
    camp.state, camp.updated_at, camp.reason = m.PAUSED, now, "paused by an operator"
    return camp


def resume(db: Session, cid: str, now: float) -> Campaign:
    camp = store.lock_campaign(db, cid)
    if camp.state != m.PAUSED:
        raise Conflict(f"campaign {cid} is {camp.state}; only a paused one can resume")
    camp.state, camp.updated_at, camp.reason = m.RUNNING, now, None
    return camp


def cancel(db: Session, cid: str, now: float) -> tuple[Campaign, list[Outgoing]]:
    """End a campaign: devices not started yet are skipped (and an asked one's desired
    message is cleared); devices already installing finish and report as usual."""
    camp = store.lock_campaign(db, cid)
    if camp.state not in m.ACTIVE_STATES:
        raise Conflict(f"campaign {cid} is {camp.state} already")
    asked = list(
        db.scalars(
            select(CampaignDevice.device_id).where(
                CampaignDevice.campaign_id == cid, CampaignDevice.state == m.PENDING,
                CampaignDevice.asked_at.is_not(None),
            )
        ).all()
    )  # fmt: skip
    db.execute(
        update(CampaignDevice)
        .where(CampaignDevice.campaign_id == cid, CampaignDevice.state == m.PENDING)
        .values(state=m.SKIPPED, state_at=now, error="cancelled before it started",
                cleared=True)
    )  # fmt: skip
    camp.state, camp.updated_at, camp.reason = m.CANCELLED, now, "cancelled by an operator"
    store.release_claims(db, cid)  # devices done with it may join another campaign now
    return camp, [store.clear_message(d) for d in asked]


def target_for(artifact: str, release: str, template: str, template_release: str) -> str:
    """The target path of ``release``, named like ``template`` (the path of
    ``template_release``): agent/camfleet-agent-<r>.tar.gz, firmware/camfleet-node-<r>.bundle,
    model/<name>-<r>.tar.gz."""
    try:
        if artifact == "agent":
            return rel.agent_target(release)
        if artifact == "firmware":
            return rel.firmware_target(release)
    except rel.ReleaseError as exc:
        raise Invalid(str(exc)) from exc
    head, sep, tail = template.rpartition(f"-{template_release}")
    if not sep:
        raise Invalid(f"cannot name the target of {artifact} {release} after {template!r}")
    return f"{head}-{release}{tail}"


@dataclass(frozen=True)
class RollbackPlan:
    created: list[Campaign]
    left_out: list[str]  # committed devices whose previous release is not known


def rollback(
    db: Session, cid: str, who: str, now: float, *, limit: int, check: ReleaseCheck | None,
    waves: tuple[plan.WaveSpec, ...] | None = None, overrides: dict[str, Any] | None = None,
) -> tuple[RollbackPlan, list[Outgoing]]:  # fmt: skip
    """Campaigns that take the devices which committed ``cid``'s release back to the release
    each ran before (one campaign per previous release, downgrade allowed). ``cid`` is
    cancelled first when it is still active."""
    src = store.lock_campaign(db, cid)
    out: list[Outgoing] = []
    if src.state in m.ACTIVE_STATES:
        src, out = cancel(db, cid, now)
    rows = db.execute(
        select(CampaignDevice.device_id, CampaignDevice.from_release).where(
            CampaignDevice.campaign_id == cid, CampaignDevice.state == m.COMMITTED
        )
    ).all()
    groups: dict[str, list[str]] = {}
    left_out: list[str] = []
    for dev, prev in rows:
        if prev is None or prev == src.release:
            left_out.append(str(dev))
        else:
            groups.setdefault(str(prev), []).append(str(dev))
    if not groups:
        raise Conflict(f"campaign {cid}: no committed device with a known previous release")
    created = []
    for prev, devices in sorted(groups.items()):
        target = target_for(src.artifact, prev, src.target, src.release)
        if check is not None:
            check(src.artifact, prev, target)
        spec = Spec(
            name=f"rollback of {src.name}"[:128], artifact=src.artifact, release=prev,
            target=target, filter=store.Filter(device_ids=tuple(sorted(devices))),
            waves=waves or (plan.WaveSpec(percent=100.0),),
            success_threshold=src.success_threshold, failure_threshold=src.failure_threshold,
            soak_s=src.soak_s, rate_per_min=src.rate_per_min, windows=tuple(src.windows),
            device_deadline_s=src.device_deadline_s, allow_downgrade=True, trial_s=src.trial_s,
        )  # fmt: skip
        if overrides:
            spec = replace(spec, **overrides)
        camp, _planned = store.create(db, spec, who, now, limit=limit, rollback_of=cid)
        assert camp is not None  # not a dry run
        created.append(camp)
    return RollbackPlan(created, sorted(left_out)), out


# ---------------------------------------------------------------- the release check
def repo_check(repo_dir: Path) -> ReleaseCheck:
    """A check that ``target`` is published in the TUF repository at ``repo_dir`` as
    ``artifact`` ``release`` (its ``custom.camfleet``). Reads the signed metadata the
    server itself serves: timestamp -> snapshot -> targets (the server trusts its own disk;
    devices verify the signatures)."""

    def check(artifact: str, release: str, target: str) -> None:
        try:
            entry = PublishedRepo(repo_dir).target_info(target)
        except (RepoError, OSError, ValueError, KeyError) as exc:
            raise Invalid(f"the OTA repository cannot be read: {exc}") from exc
        if entry is None:
            raise Invalid(f"target {target!r} is not published in the OTA repository")
        info = entry.custom.get("camfleet") or {}
        if info.get("artifact") != artifact or info.get("release") != release:
            raise Invalid(
                f"target {target!r} is {info.get('artifact')} {info.get('release')}, "
                f"not {artifact} {release}"
            )

    return check


# ---------------------------------------------------------------- read models
def counts(db: Session, cid: str) -> tuple[dict[str, int], list[dict[str, int]]]:
    """Per-state counts of the whole campaign, and per wave (with healthy/unhealthy)."""
    rows = db.execute(
        select(CampaignDevice.wave, CampaignDevice.state, CampaignDevice.healthy, func.count())
        .where(CampaignDevice.campaign_id == cid)
        .group_by(CampaignDevice.wave, CampaignDevice.state, CampaignDevice.healthy)
    ).all()
    total: dict[str, int] = dict.fromkeys(m.DEVICE_STATES, 0)
    per_wave: dict[int, dict[str, int]] = {}
    for wave, state, healthy, n in rows:
        total[str(state)] += int(n)
        w = per_wave.setdefault(int(wave), {**dict.fromkeys(m.DEVICE_STATES, 0),
                                            "healthy": 0, "unhealthy": 0})  # fmt: skip
        w[str(state)] += int(n)
        if state == m.COMMITTED and healthy is True:
            w["healthy"] += int(n)
        elif state == m.COMMITTED and healthy is False:
            w["unhealthy"] += int(n)
    return total, [per_wave[k] for k in sorted(per_wave)]


def device_rows(
    db: Session, cid: str, state: str | None, wave: int | None, limit: int, offset: int
) -> tuple[list[CampaignDevice], int]:
    query = select(CampaignDevice).where(CampaignDevice.campaign_id == cid)
    if state:
        query = query.where(CampaignDevice.state == state)
    if wave is not None:
        query = query.where(CampaignDevice.wave == wave)
    return page(db, query, limit, offset, CampaignDevice.position)


def latest_for_device(db: Session, device_id: str) -> tuple[Campaign, CampaignDevice] | None:
    row = db.execute(
        select(Campaign, CampaignDevice)
        .join(CampaignDevice, CampaignDevice.campaign_id == Campaign.id)
        .where(CampaignDevice.device_id == device_id)
        .order_by(Campaign.created_at.desc())
        .limit(1)
    ).first()
    return None if row is None else (row[0], row[1])
