"""What needs attention now, for the overview: offline devices, open alerts (degraded scene
health apart), certificates near expiry, failed updates and halted rollouts. Most severe
first, then oldest first. Each kind is counted in SQL and at most ``limit`` rows of each are
read, so the overview stays cheap with 10,000 devices."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from fleet_server.dashboard.i18n import t
from fleet_server.db import Device
from fleet_server.health.alerts import ACTIVE, Alert
from fleet_server.health.rules import CRITICAL, OFFLINE_RULE
from fleet_server.identity.model import Commissioning, IssuedCertificate, Site
from fleet_server.ingest.quarantine import QuarantinedDevice
from fleet_server.receipts.model import EventStream
from fleet_server.rollouts import model as rm

CRIT, WARN = 2, 1
KINDS = ("offline", "alert", "scene", "certificate", "update", "rollout", "quarantine",
         "flooding", "loss")  # fmt: skip
LOSS_WINDOW_S = 24 * 3600  # a stream that lost events and changed within this is listed


@dataclass(frozen=True)
class Problem:
    severity: int  # CRIT or WARN
    kind: str  # one of KINDS (or a feature's own)
    subject: str  # device id, or campaign name
    since: float  # unix time the condition began (or, for certificates, expires)
    detail: str  # translated text
    href: str
    site: str = ""


@dataclass
class Problems:
    rows: list[Problem] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.counts.values())


# A feature adds a source: (session, now, limit) -> (its problems, how many in all)
Source = Callable[[Session, float, int], tuple[list[Problem], int]]


def _offline(db: Session, now: float, limit: int) -> tuple[list[Problem], int]:
    where = Device.state == "offline"
    n = db.scalar(select(func.count()).select_from(Device).where(where)) or 0
    rows = db.scalars(select(Device).where(where).order_by(Device.state_changed_at).limit(limit))
    found = [
        Problem(CRIT, "offline", d.id, d.state_changed_at or d.last_seen or now,
                t("offline") + (f" · {d.state_reason}" if d.state_reason else ""),
                f"/ui/devices/{d.id}")
        for d in rows
    ]  # fmt: skip
    return found, n


def _alerts(scene: bool) -> Source:
    def source(db: Session, now: float, limit: int) -> tuple[list[Problem], int]:
        where = [Alert.state.in_(ACTIVE), Alert.rule != OFFLINE_RULE]
        where.append(Alert.rule == "scene" if scene else Alert.rule != "scene")
        n = db.scalar(select(func.count()).select_from(Alert).where(*where)) or 0
        rows = db.scalars(select(Alert).where(*where).order_by(Alert.opened_at).limit(limit))
        kind = "scene" if scene else "alert"
        found = [
            Problem(CRIT if a.severity == CRITICAL else WARN, kind, a.device_id, a.opened_at,
                    a.message + (f" ({t(a.state)})" if a.state != "open" else ""),
                    f"/ui/devices/{a.device_id}")
            for a in rows
        ]  # fmt: skip
        return found, n

    return source


def _certificates(warn_days: float) -> Source:
    def source(db: Session, now: float, limit: int) -> tuple[list[Problem], int]:
        newest = (
            select(IssuedCertificate.device_id, func.max(IssuedCertificate.not_after).label("na"))
            .group_by(IssuedCertificate.device_id).subquery()
        )  # fmt: skip
        where = newest.c.na < now + warn_days * 86400
        n = db.scalar(select(func.count()).select_from(newest).where(where)) or 0
        rows = db.execute(
            select(newest.c.device_id, newest.c.na).where(where).order_by(newest.c.na).limit(limit)
        ).all()
        found = []
        for device_id, not_after in rows:
            days = (not_after - now) / 86400
            left = t("certificate expires in {n} days", n=max(0, round(days)))
            text = t("certificate expired") if days <= 0 else left
            found.append(Problem(CRIT if days < 7 else WARN, "certificate", device_id, not_after,
                                 text, f"/ui/devices/{device_id}"))  # fmt: skip
        return found, n

    return source


def _updates(db: Session, now: float, limit: int) -> tuple[list[Problem], int]:
    live = select(rm.Campaign.id).where(rm.Campaign.state.in_(rm.ACTIVE_STATES))
    where = [rm.CampaignDevice.state.in_((rm.FAILED, rm.ROLLED_BACK)),
             rm.CampaignDevice.campaign_id.in_(live)]  # fmt: skip
    n = db.scalar(select(func.count()).select_from(rm.CampaignDevice).where(*where)) or 0
    rows = db.scalars(
        select(rm.CampaignDevice).where(*where).order_by(rm.CampaignDevice.state_at).limit(limit)
    )
    found = [
        Problem(WARN, "update", r.device_id, r.state_at or now,
                t("update {state}", state=t(r.state)) + (f": {r.error}" if r.error else ""),
                f"/ui/devices/{r.device_id}")
        for r in rows
    ]  # fmt: skip
    return found, n


def _halted(db: Session, now: float, limit: int) -> tuple[list[Problem], int]:
    where = rm.Campaign.state == rm.HALTED
    n = db.scalar(select(func.count()).select_from(rm.Campaign).where(where)) or 0
    rows = db.scalars(
        select(rm.Campaign).where(where).order_by(rm.Campaign.updated_at).limit(limit)
    )
    found = [
        Problem(CRIT, "rollout", c.name, c.updated_at,
                t("rollout halted") + (f": {c.reason}" if c.reason else ""), f"/ui/rollouts/{c.id}")
        for c in rows
    ]  # fmt: skip
    return found, n


def _quarantined(automatic: bool) -> Source:
    """Devices shut out by an operator, or by the flood rule (``automatic``)."""

    def source(db: Session, now: float, limit: int) -> tuple[list[Problem], int]:
        where = QuarantinedDevice.automatic.is_(automatic)
        n = db.scalar(select(func.count()).select_from(QuarantinedDevice).where(where)) or 0
        rows = db.scalars(select(QuarantinedDevice).where(where)
                          .order_by(QuarantinedDevice.since).limit(limit))  # fmt: skip
        kind = "flooding" if automatic else "quarantine"
        found = [
            Problem(CRIT, kind, q.device_id, q.since,
                    t("quarantined by {who}", who=q.by) + (f": {q.reason}" if q.reason else ""),
                    f"/ui/devices/{q.device_id}")
            for q in rows
        ]  # fmt: skip
        return found, n

    return source


def _losses(db: Session, now: float, limit: int) -> tuple[list[Problem], int]:
    """Devices whose events were lost for good (issue 14's receipts), lately."""
    where = [EventStream.lost > 0, EventStream.updated_at >= now - LOSS_WINDOW_S]
    n = db.scalar(select(func.count()).select_from(EventStream).where(*where)) or 0
    rows = db.scalars(select(EventStream).where(*where)
                      .order_by(EventStream.updated_at).limit(limit))  # fmt: skip
    found = [
        Problem(WARN, "loss", r.device_id, r.updated_at, t("{n} events lost", n=int(r.lost)),
                f"/ui/devices/{r.device_id}")
        for r in rows
    ]  # fmt: skip
    return found, n


EXTRA_SOURCES: list[tuple[str, Source]] = []  # features (quarantine, flooding) add theirs


def gather(db: Session, now: float, cert_warn_days: float, limit: int = 200) -> Problems:
    sources: list[tuple[str, Source]] = [
        ("offline", _offline), ("alert", _alerts(scene=False)), ("scene", _alerts(scene=True)),
        ("certificate", _certificates(cert_warn_days)), ("update", _updates),
        ("rollout", _halted), ("quarantine", _quarantined(automatic=False)),
        ("flooding", _quarantined(automatic=True)), ("loss", _losses), *EXTRA_SOURCES,
    ]  # fmt: skip
    out = Problems()
    for kind, source in sources:
        rows, n = source(db, now, limit)
        out.counts[kind] = n
        out.rows.extend(rows)
    out.rows.sort(key=lambda p: (-p.severity, p.since, p.subject))
    out.rows = out.rows[:limit]
    _add_sites(db, out)
    return out


def _add_sites(db: Session, found: Problems) -> None:
    ids = {p.subject for p in found.rows if p.href.startswith("/ui/devices/")}
    if not ids:
        return
    rows = db.execute(
        select(Commissioning.device_id, Site.name)
        .join(Site, Site.site_id == Commissioning.site_id)
        .where(Commissioning.device_id.in_(ids)).order_by(Commissioning.received_at)
    ).all()  # fmt: skip
    site = {str(d): str(name) for d, name in rows}  # the latest record wins
    found.rows = [
        Problem(p.severity, p.kind, p.subject, p.since, p.detail, p.href, site.get(p.subject, ""))
        if p.href.startswith("/ui/devices/") else p
        for p in found.rows
    ]  # fmt: skip
