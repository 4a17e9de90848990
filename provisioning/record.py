"""The commissioning record: what the technician tells about the site, plus the frame the
camera saw, signed with the device's key (``common.commissioning``)."""

from __future__ import annotations

import base64
import json
import time
import uuid
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from common import commissioning as signed
from common import privacy
from provisioning.errors import ProvisionError

MEDIA = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".bmp": "image/bmp"}


def media_type(origin: str) -> str:
    return MEDIA.get(Path(origin).suffix.lower(), "image/x-portable-anymap")


def load_layout(path: Path | None) -> dict[str, Any]:
    """Zones, counting lines and masks from a JSON file: {"zones": [...], "lines": [...],
    "masks": {"privacy": [...], "motion": [...]}} (masks: docs/privacy.md)."""
    if path is None:
        return {"zones": [], "lines": []}
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ProvisionError(f"cannot read the zones file {path}: {exc}", "check the JSON") from exc
    if not isinstance(data, dict) or set(data) - {"zones", "lines", "masks"}:
        raise ProvisionError(f"{path}: expected an object with 'zones', 'lines', 'masks'")
    out = {"zones": data.get("zones", []), "lines": data.get("lines", [])}
    if "masks" in data:
        try:
            out["masks"] = privacy.check_masks(data["masks"])
        except privacy.MaskError as exc:
            raise ProvisionError(f"{path}: masks: {exc}", "redraw the masks") from exc
    return out


def build(
    device_id: str,
    kind: str,
    site: dict[str, Any],
    layout: dict[str, Any],
    technician: str,
    frame: bytes | None = None,
    frame_type: str = "image/png",
) -> dict[str, Any]:
    record: dict[str, Any] = {
        "v": signed.RECORD_VERSION,
        "record_id": uuid.uuid4().hex,
        "device_id": device_id,
        "kind": kind,
        "site": site,
        "zones": layout.get("zones", []),
        "lines": layout.get("lines", []),
        "reference_frame": None,
        "created_at": round(time.time(), 3),
        "technician": technician,
    }
    if layout.get("masks") is not None:  # issue 20: signed with the record
        record["masks"] = layout["masks"]
    if frame is not None:
        record["reference_frame"] = {
            "sha256": signed.frame_digest(frame),
            "media_type": frame_type,
            "size": len(frame),
        }
    return record


def submission(
    record: dict[str, Any],
    key: ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey,
    cert_pem: str,
    frame: bytes | None,
) -> dict[str, Any]:
    return {
        "record": record,
        "signature": signed.sign(record, key),
        "certificate": cert_pem,
        "frame_b64": base64.b64encode(frame).decode() if frame is not None else None,
    }
