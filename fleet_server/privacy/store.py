"""Privacy queries: a site's policy, a camera's masks, where a device is, refusal counts, and
the desired-config ``privacy`` section each camera is sent. Callers hold the transaction."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from common import privacy
from fleet_server.commands import store as commands
from fleet_server.commands.store import Outgoing
from fleet_server.db import Device
from fleet_server.identity.model import Commissioning
from fleet_server.privacy.model import CameraMasks, PrivacyRefusal, SitePrivacy
from fleet_server.privacy.policy import CameraPolicy

# a legal basis is a sentence naming the law and the decision, not a word
LEGAL_BASIS_MIN = 12
LEGAL_BASIS_MAX = 2000


class PrivacyError(Exception):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


def site_of(db: Session, device_id: str) -> str | None:
    """The site of the device's latest commissioning record, or None."""
    return db.scalar(
        select(Commissioning.site_id)
        .where(Commissioning.device_id == device_id)
        .order_by(Commissioning.id.desc())
        .limit(1)
    )


def devices_at(db: Session, site_id: str) -> list[str]:
    """Devices whose latest commissioning record is at ``site_id``."""
    rows = db.execute(
        select(Commissioning.device_id, Commissioning.site_id).order_by(Commissioning.id)
    ).all()
    latest: dict[str, str] = {}
    for device_id, site in rows:
        latest[device_id] = site
    return sorted(d for d, s in latest.items() if s == site_id)


@dataclass(frozen=True)
class SiteView:
    site_id: str
    policy: str
    version: int
    legal_basis: str | None
    decided_by: str | None
    decided_at: float | None
    retention_days: int | None  # None: the server's default


def site_view(db: Session, site_id: str) -> SiteView:
    row = db.get(SitePrivacy, site_id)
    if row is None:
        return SiteView(site_id, privacy.DEFAULT_POLICY, 0, None, None, None, None)
    return SiteView(site_id, row.policy, row.version, row.legal_basis, row.decided_by,
                    row.decided_at, row.retention_days)  # fmt: skip


def camera_policy(db: Session, device_id: str) -> CameraPolicy:
    site = site_of(db, device_id)
    view = site_view(db, site) if site is not None else None
    masks = db.get(CameraMasks, device_id)
    return CameraPolicy(
        site_id=site,
        policy=view.policy if view is not None else privacy.DEFAULT_POLICY,
        policy_version=view.version if view is not None else 0,
        masks_version=masks.version if masks is not None else 0,
        stale=bool(masks.stale) if masks is not None else False,
    )


def set_policy(
    db: Session, site_id: str, policy: str, legal_basis: str | None, retention_days: int | None,
    who: str, now: float,
) -> SitePrivacy:  # fmt: skip
    """Set a site's policy; ``full`` needs a legal basis (the decision is audited by the
    caller, in this transaction)."""
    try:
        privacy.check_policy(policy)
    except privacy.MaskError as exc:
        raise PrivacyError(400, str(exc)) from exc
    basis = (legal_basis or "").strip() or None
    if policy == privacy.FULL and (basis is None or len(basis) < LEGAL_BASIS_MIN):
        raise PrivacyError(
            400,
            "policy full needs the legal basis of the decision (at least "
            f"{LEGAL_BASIS_MIN} characters: the law, the decision, who took it)",
        )
    if basis is not None and len(basis) > LEGAL_BASIS_MAX:
        raise PrivacyError(400, f"legal basis longer than {LEGAL_BASIS_MAX} characters")
    row = db.get(SitePrivacy, site_id, with_for_update=True)
    if row is None:
        row = SitePrivacy(site_id=site_id, policy=policy, version=1, legal_basis=basis,
                          decided_by=who[:64], decided_at=now,
                          retention_days=retention_days)  # fmt: skip
        db.add(row)
    else:
        row.version += 1
        row.policy, row.legal_basis = policy, basis
        row.decided_by, row.decided_at = who[:64], now
        row.retention_days = retention_days
    db.flush()
    return row


def set_masks(
    db: Session, device_id: str, masks: privacy.Masks, source: str, who: str, now: float
) -> CameraMasks:
    """New masks for a camera (already checked): version + 1, no longer stale."""
    row = db.get(CameraMasks, device_id, with_for_update=True)
    digest = privacy.masks_digest(masks)
    if row is None:
        row = CameraMasks(device_id=device_id, version=1, masks=masks, digest=digest,
                          source=source[:128], updated_by=who[:64], updated_at=now,
                          stale=False)  # fmt: skip
        db.add(row)
    else:
        row.version += 1
        row.masks, row.digest, row.source = masks, digest, source[:128]
        row.updated_by, row.updated_at = who[:64], now
        row.stale, row.stale_since = False, None
    db.flush()
    return row


def mark_stale(db: Session, device_id: str, now: float) -> bool:
    """The camera's view moved: its masks are stale until confirmed. True when it changed."""
    row = db.get(CameraMasks, device_id, with_for_update=True)
    if row is None:
        empty = privacy.check_masks(None)
        row = CameraMasks(device_id=device_id, version=0, masks=empty,
                          digest=privacy.masks_digest(empty), source="none",
                          updated_by="system", updated_at=now, stale=False)  # fmt: skip
        db.add(row)
    if row.stale:
        return False
    row.stale, row.stale_since = True, now
    return True


def confirm(db: Session, device_id: str, who: str, now: float) -> CameraMasks:
    """Someone looked at the view and the masks: the masks stand again (a new version, so
    the box knows the confirmation is newer than its move)."""
    row = db.get(CameraMasks, device_id, with_for_update=True)
    if row is None:
        raise PrivacyError(404, f"no masks for {device_id}")
    row.version += 1
    row.stale, row.stale_since = False, None
    row.confirmed_by, row.confirmed_at = who[:64], now
    db.flush()
    return row


def count_refusal(
    db: Session, device_id: str, site_id: str | None, reason: str, now: float, n: int = 1
) -> None:
    row = db.get(PrivacyRefusal, (device_id, reason), with_for_update=True)
    if row is None:
        db.add(PrivacyRefusal(device_id=device_id, reason=reason, site_id=site_id, count=n,
                              last_at=now))  # fmt: skip
        db.flush()
    else:
        row.count += n
        row.last_at = now
        row.site_id = site_id


def refusals(db: Session, device_ids: Sequence[str] | None = None) -> list[PrivacyRefusal]:
    query = select(PrivacyRefusal).order_by(PrivacyRefusal.device_id, PrivacyRefusal.reason)
    if device_ids is not None:
        query = query.where(PrivacyRefusal.device_id.in_(list(device_ids)))
    return list(db.scalars(query).all())


def section_for(db: Session, device_id: str) -> dict[str, object]:
    cam = camera_policy(db, device_id)
    row = db.get(CameraMasks, device_id)
    masks = privacy.check_masks(row.masks if row is not None else None)
    policy = privacy.NONE if cam.stale else cam.policy
    return privacy.section(policy, cam.policy_version, masks, cam.masks_version)


def push(db: Session, device_ids: Sequence[str], who: str, now: float) -> list[Outgoing]:
    """Publish the privacy section in the desired config of each camera (agents; a cabinet
    node has no camera). The operator's other settings stay as they are."""
    out: list[Outgoing] = []
    for device_id in device_ids:
        dev = db.get(Device, device_id)
        if dev is not None and dev.kind != "agent":
            continue
        current = db.get(commands.DeviceConfig, device_id)
        config = dict(current.config) if current is not None else {}
        config["privacy"] = section_for(db, device_id)
        try:
            _rec, msg = commands.set_desired(db, device_id, config, who, now)
        except commands.CommandError as exc:
            raise PrivacyError(400, f"desired config of {device_id}: {exc}") from exc
        out.append(msg)
    return out
