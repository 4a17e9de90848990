"""The part that runs ON the Linux box (``camfleet-provision on-box``), started by the
technician's tool through its transport (or by the technician on the box itself).

The box makes its key here and it never leaves: only the CSR goes to the EST server and
only the signed record (with the certificate) goes back to the laptop. Parameters arrive
as JSON on stdin (so the token never shows in a process list); the submission is the last
line of stdout.
"""

from __future__ import annotations

import json
import logging
import os
import ssl
import tomllib
import urllib.request
from pathlib import Path
from typing import Any, cast

from pydantic import TypeAdapter, ValidationError

from agent.config import CameraSettings
from agent.errors import AgentError
from agent.identity import est_client
from agent.vision.camera import make_source
from agent.vision.privacy import STATE_NAME, PrivacyState, masked_image
from common import privacy
from common.files import atomic_write
from common.settings import dump_toml
from provisioning import record
from provisioning.errors import ProvisionError

log = logging.getLogger(__name__)

CONF_DIR = "etc/camfleet-agent"
STATE_DIR = "var/lib/camfleet-agent"
_ROOT_MAX = 1 << 20  # a TUF root.json is a few KiB


def _capture(camera: dict[str, Any]) -> tuple[bytes, str]:
    try:
        # a union type, not a class: pydantic releases disagree on its type, so as Any
        adapter: TypeAdapter[Any] = TypeAdapter(cast(Any, CameraSettings))
        settings = adapter.validate_python(camera)
        source = make_source(settings)
        source.open()
        try:
            frame = source.read()
        finally:
            source.close()
    except (ValidationError, AgentError, OSError) as exc:
        raise ProvisionError(f"no frame from the camera: {exc}", "check the camera cable") from exc
    if frame is None:
        raise ProvisionError("the camera gave no frame", "check the camera and its config")
    return frame.data, record.media_type(frame.origin)


def merge_config(path: Path, enrolled: dict[str, object]) -> dict[str, object]:
    """The box's config (the package's, say) with what enrollment sets put over it: the
    tables it does not set ([ota], [pipeline], ...) stay; ``mqtt`` and ``renewal`` keep
    their other keys; ``camera`` is replaced whole (another camera type has other keys)."""
    try:
        old: dict[str, object] = tomllib.loads(path.read_text())
    except FileNotFoundError:
        old = {}
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ProvisionError(
            f"{path} is not a readable TOML file: {exc}", "fix it or remove it"
        ) from exc
    out = dict(old)
    for key, value in enrolled.items():
        before = old.get(key)
        if isinstance(value, dict) and isinstance(before, dict) and key != "camera":
            out[key] = {**before, **value}
        else:
            out[key] = value
    return out


def fetch_trusted_root(root: Path, config: dict[str, object], ca: Path) -> Path | None:
    """The fleet's TUF root (``1.root.json``) from the server's OTA listener into the
    config's ``[ota] trusted_root``, when there is an [ota] table and no such file yet:
    fetched over HTTPS checked against the fleet root CA the technician brought. A failure
    is logged, not fatal: the box reports, and OTA updates wait for the file."""
    ota = config.get("ota")
    if not isinstance(ota, dict) or not ota.get("metadata_url") or not ota.get("trusted_root"):
        return None
    dest = Path(str(ota["trusted_root"]))
    if dest.exists() or not dest.is_relative_to(root):
        return None
    url = str(ota["metadata_url"]).rstrip("/") + "/1.root.json"
    if not url.startswith("https://"):
        log.warning("not fetching the TUF root over %s: https only", url)
        return None
    try:
        context = ssl.create_default_context(cafile=str(ca))
        with urllib.request.urlopen(url, timeout=15, context=context) as resp:  # noqa: S310
            data = resp.read(_ROOT_MAX + 1)
        doc = json.loads(data)
        if len(data) > _ROOT_MAX or doc["signed"]["_type"] != "root":
            raise ValueError("not a TUF root")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("the fleet's TUF root was not fetched from %s (%s): OTA updates wait "
                    "until %s is there", url, exc, dest)  # fmt: skip
        return None
    dest.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(str(dest), data, 0o644)
    return dest


def hand_over(root: Path, paths: list[Path]) -> None:
    """Run as root on a packaged box: the files go to the agent's user (the owner of its
    state directory), so the service can read its key and renew its certificate."""
    if os.geteuid() != 0:
        return
    st = (root / STATE_DIR).stat()
    if st.st_uid == 0:
        return
    for path in paths:
        os.chown(path, st.st_uid, st.st_gid)


def _apply_masks(root: Path, frame: bytes, raw: object) -> tuple[bytes, str, Path]:
    """The reference frame with the privacy masks blacked out (it is what gets signed and
    sent), and the masks in the box's privacy state (docs/privacy.md)."""
    try:
        masks = privacy.check_masks(raw)
        masked = masked_image(frame, masks)
    except (privacy.MaskError, ValueError) as exc:
        raise ProvisionError(f"masks: {exc}", "redraw the masks") from exc
    (root / STATE_DIR).mkdir(parents=True, exist_ok=True)
    state = PrivacyState(root / STATE_DIR)
    state.apply(privacy.section(privacy.DEFAULT_POLICY, 0, masks, 1))
    return masked, "image/png", root / STATE_DIR / STATE_NAME


def enroll(root: Path, params: dict[str, Any]) -> dict[str, Any]:
    device_id = str(params["device_id"])
    conf = root / CONF_DIR
    conf.mkdir(parents=True, exist_ok=True)
    ca = conf / "root.pem"
    if not ca.exists():
        raise ProvisionError(f"{ca} missing", "the tool writes it first; run it again")
    client = est_client.EstClient(str(params["est_url"]), ca)
    issuing = client.cacerts()[0]
    key = est_client.new_key()
    cert = client.simpleenroll(est_client.make_csr(key, device_id), str(params["token"]), device_id)
    atomic_write(str(conf / "key.pem"), est_client.key_pem(key), 0o600)
    cert_pem = est_client.pem(cert) + est_client.pem(issuing)
    atomic_write(str(conf / "cert.pem"), cert_pem, 0o644)
    camera = dict(params.get("camera") or {"type": "synthetic", "fps": 5.0})
    config: dict[str, object] = {
        "device_id": device_id,
        "heartbeat_s": float(params.get("heartbeat_s", 30.0)),
        "state_dir": str(root / STATE_DIR),
        "mqtt": {
            "host": str(params["mqtt_host"]),
            "port": int(params["mqtt_port"]),
            "ca": str(ca),
            "cert": str(conf / "cert.pem"),
            "key": str(conf / "key.pem"),
        },
        "camera": camera,
        "renewal": {"est_url": str(params["est_url"])},
    }
    (root / STATE_DIR).mkdir(parents=True, exist_ok=True)
    merged = merge_config(conf / "agent.toml", config)
    atomic_write(str(conf / "agent.toml"), dump_toml(merged).encode(), 0o644)
    written = [conf / "key.pem", conf / "cert.pem", conf / "agent.toml", ca]
    trusted = fetch_trusted_root(root, merged, ca)
    frame, ftype = _capture(camera)
    masks = (params.get("layout") or {}).get("masks")
    if masks is not None:  # issue 20: the box applies them from its first frame
        frame, ftype, state = _apply_masks(root, frame, masks)
        written.append(state)
    hand_over(root, [*written, *([trusted] if trusted else [])])
    body = record.build(
        device_id, "agent", params["site"], params.get("layout") or {}, params["technician"],
        frame, ftype,
    )  # fmt: skip
    return record.submission(body, key, cert_pem.decode(), frame)


def main(root: Path, stdin_text: str) -> str:
    """Run the on-box step; the submission as one JSON line."""
    try:
        params = json.loads(stdin_text)
    except ValueError as exc:
        raise ProvisionError(f"parameters are not JSON: {exc}") from exc
    return json.dumps(enroll(root, params))
