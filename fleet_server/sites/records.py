"""Commissioning records: checked, then stored with their site (or refused, storing nothing).

A submission carries the record, the device's signature over its canonical form, the
device's certificate (PEM) and, optionally, the reference frame (base64; its SHA-256 is
inside the signed record). Checks: shape and ranges, the certificate was issued by our CA
through enrollment to that device and is not revoked, the signature verifies with its key,
the frame matches its digest. A record id already stored is answered as stored (the
technician's offline queue may send twice).
"""

from __future__ import annotations

import base64
import binascii
import time
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.x509.oid import NameOID
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from common import commissioning as signed
from common import privacy
from fleet_server.access import audit
from fleet_server.access.audit import Actor
from fleet_server.identity.ca import CertificateAuthority
from fleet_server.identity.ca_ops import issuing_cert
from fleet_server.identity.model import Commissioning, IssuedCertificate, RevokedDevice, Site
from fleet_server.privacy import store as privacy_store

ID_PATTERN = r"^[a-z0-9][a-z0-9-]{1,62}[a-z0-9]$"


class SiteRecordError(Exception):
    def __init__(self, status: int, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.status = status
        self.reason = reason
        self.detail = detail


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SiteInfo(_Strict):
    site_id: str = Field(pattern=ID_PATTERN, description="Site id")
    name: str = Field(min_length=1, max_length=256, description="Site name")
    lat: float = Field(ge=-90, le=90, description="Latitude, WGS84 degrees")
    lon: float = Field(ge=-180, le=180, description="Longitude, WGS84 degrees")
    mounting_height_m: float = Field(ge=0, le=100, description="Camera height above ground, m")
    azimuth_deg: float = Field(ge=0, lt=360, description="Camera aim, degrees from north")
    notes: str = Field("", max_length=4000, description="Free text from the technician")


Point = tuple[float, float]


class Zone(_Strict):
    name: str = Field(min_length=1, max_length=64, description="Zone name")
    polygon: list[Point] = Field(
        min_length=3, max_length=64, description="Corners, image coordinates 0..1"
    )


class Line(_Strict):
    name: str = Field(min_length=1, max_length=64, description="Counting line name")
    a: Point = Field(description="Start, image coordinates 0..1")
    b: Point = Field(description="End, image coordinates 0..1")


class FrameRef(_Strict):
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="SHA-256 of the frame bytes")
    media_type: str = Field(max_length=64, description="e.g. image/png")
    size: int = Field(ge=1, description="Bytes")


class RecordBody(_Strict):
    v: int = Field(description="Record format version (1)")
    record_id: str = Field(min_length=8, max_length=64, description="Unique id of the record")
    device_id: str = Field(pattern=ID_PATTERN, description="Device id (certificate CN)")
    kind: str = Field(pattern="^(agent|node)$", description="agent or node")
    site: SiteInfo = Field(description="Where and how the device is mounted")
    zones: list[Zone] = Field(default_factory=list, max_length=64, description="Zones")
    lines: list[Line] = Field(default_factory=list, max_length=64, description="Lines")
    reference_frame: FrameRef | None = Field(None, description="Frame captured at install")
    masks: dict[str, Any] | None = Field(
        None, description="Privacy and motion masks drawn on the reference frame (issue 20)"
    )
    created_at: float = Field(description="When the record was made (Unix seconds)")
    technician: str = Field(max_length=64, description="Who commissioned the site")


def _in_unit(points: list[Point]) -> bool:
    return all(0.0 <= x <= 1.0 and 0.0 <= y <= 1.0 for x, y in points)


class SiteRecords:
    def __init__(
        self, sessions: sessionmaker[Session], ca: CertificateAuthority, max_frame: int
    ) -> None:
        self.sessions = sessions
        self.ca = ca
        self.max_frame = max_frame

    def submit(
        self,
        record: dict[str, Any],
        signature: str,
        certificate_pem: str,
        frame_b64: str | None,
        by: Actor,
    ) -> tuple[str, bool]:
        """Check and store; (record_id, stored_now). Raises SiteRecordError."""
        target = str(record.get("device_id", ""))[:64]
        try:
            body, cert, frame = self._check(record, signature, certificate_pem, frame_b64)
            stored = self._store(body, record, signature, cert, frame, by)
        except SiteRecordError as exc:
            audit.record_now(
                self.sessions, by, "commissioning.submit", target, f"refused:{exc.reason}"
            )
            raise
        return body.record_id, stored

    def _check(
        self, record: dict[str, Any], signature: str, certificate_pem: str, frame_b64: str | None
    ) -> tuple[RecordBody, x509.Certificate, bytes | None]:
        try:
            body = RecordBody.model_validate(record)
        except ValidationError as exc:
            raise SiteRecordError(400, "bad_record", str(exc.errors()[:3])) from exc
        if body.v != signed.RECORD_VERSION:
            raise SiteRecordError(400, "bad_record", f"record version {body.v} not supported")
        for zone in body.zones:
            if not _in_unit(zone.polygon):
                raise SiteRecordError(400, "bad_record", f"zone {zone.name} outside the image")
        for line in body.lines:
            if not _in_unit([line.a, line.b]):
                raise SiteRecordError(400, "bad_record", f"line {line.name} outside the image")
        if body.masks is not None:
            try:
                privacy.check_masks(body.masks)
            except privacy.MaskError as exc:
                raise SiteRecordError(400, "bad_masks", str(exc)) from exc
        cert = self._device_cert(certificate_pem, body.device_id)
        try:
            signed.verify(record, signature, cert.public_key())
        except signed.RecordError as exc:
            raise SiteRecordError(400, "bad_signature", str(exc)) from exc
        frame = self._frame(body, frame_b64)
        return body, cert, frame

    def _device_cert(self, pem: str, device_id: str) -> x509.Certificate:
        try:
            cert = x509.load_pem_x509_certificate(pem.encode())
            cert.verify_directly_issued_by(issuing_cert(self.ca))
        except (ValueError, TypeError, InvalidSignature) as exc:
            raise SiteRecordError(400, "bad_certificate", f"not our certificate: {exc}") from exc
        cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        if not cns or cns[0].value != device_id:
            raise SiteRecordError(400, "bad_certificate", "certificate is not the device's")
        serial = format(cert.serial_number, "x")
        with self.sessions() as db:
            known = db.get(IssuedCertificate, serial)
            revoked = db.get(RevokedDevice, device_id) is not None
        if known is None or known.device_id != device_id:
            raise SiteRecordError(400, "bad_certificate", "certificate not issued by enrollment")
        if revoked or known.revoked_at is not None:
            raise SiteRecordError(403, "device_revoked", f"{device_id} is revoked")
        return cert

    def _frame(self, body: RecordBody, frame_b64: str | None) -> bytes | None:
        ref = body.reference_frame
        if ref is None:
            if frame_b64:
                raise SiteRecordError(400, "bad_frame", "a frame was sent but the record has none")
            return None
        if not frame_b64:
            raise SiteRecordError(400, "bad_frame", "the record names a frame that was not sent")
        if len(frame_b64) > self.max_frame * 4 // 3 + 8:
            raise SiteRecordError(413, "frame_too_large", f"frame larger than {self.max_frame}")
        try:
            frame = base64.b64decode(frame_b64, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise SiteRecordError(400, "bad_frame", "frame is not base64") from exc
        if signed.frame_digest(frame) != ref.sha256 or len(frame) != ref.size:
            raise SiteRecordError(400, "bad_frame", "frame does not match its signed digest")
        return frame

    def _store(
        self,
        body: RecordBody,
        record: dict[str, Any],
        signature: str,
        cert: x509.Certificate,
        frame: bytes | None,
        by: Actor,
    ) -> bool:
        now = time.time()
        with self.sessions.begin() as db:
            exists = db.scalar(
                select(Commissioning.id).where(Commissioning.record_id == body.record_id)
            )
            if exists is not None:
                return False
            site = db.get(Site, body.site.site_id)
            if site is None:
                site = Site(site_id=body.site.site_id, name=body.site.name, updated_at=now)
                db.add(site)
            site.name = body.site.name
            site.lat = body.site.lat
            site.lon = body.site.lon
            site.updated_at = now
            db.flush()
            db.add(
                Commissioning(
                    record_id=body.record_id,
                    device_id=body.device_id,
                    site_id=body.site.site_id,
                    record=record,
                    signature=signature,
                    certificate_serial=format(cert.serial_number, "x"),
                    reference_frame=frame,
                    submitted_by=by.name,
                    received_at=now,
                )
            )
            audit.record(
                db,
                by,
                "commissioning.submit",
                body.device_id,
                detail={"record_id": body.record_id, "site_id": body.site.site_id},
            )
            if body.masks is not None:  # the signed masks become the camera's masks
                masks = privacy_store.set_masks(
                    db,
                    body.device_id,
                    privacy.check_masks(body.masks),
                    f"commissioning:{body.record_id}",
                    by.name,
                    now,
                )
                audit.record(
                    db,
                    by,
                    "privacy.masks",
                    body.device_id,
                    "ok",
                    {"version": masks.version, "digest": masks.digest, "record_id": body.record_id},
                )
        return True

    def latest_for_device(self, device_id: str) -> Commissioning | None:
        with self.sessions() as db:
            return db.scalars(
                select(Commissioning)
                .where(Commissioning.device_id == device_id)
                .order_by(Commissioning.id.desc())
                .limit(1)
            ).first()

    def for_site(self, site_id: str) -> tuple[Site | None, list[Commissioning]]:
        with self.sessions() as db:
            site = db.get(Site, site_id)
            rows = db.scalars(
                select(Commissioning)
                .where(Commissioning.site_id == site_id)
                .order_by(Commissioning.id)
            ).all()
            return site, list(rows)
