"""The box's privacy state: the site's snapshot policy and the camera's masks (from the
desired config's ``privacy`` section, kept in ``state_dir/privacy.json``), and what every
image that leaves the box goes through.

- ``mask_frame`` blacks out the privacy masks in a frame as it arrives (before anything else
  sees it); ``motion_ignore`` gives the motion gate the pixels it must not look at;
- ``outgoing`` turns a (masked) image into what the policy lets leave: nothing (``none``,
  or while the masks are stale), a thumbnail of at most ``ANON_MAX_SIDE`` pixels
  (``anonymised``: no face, person or plate can be recognised in it; the server checks
  the size), or the image (``full``); with the marking the server checks;
- ``moved`` (scene health saw the view move) makes the masks stale: no image leaves until a
  desired config with newer masks (a confirmation is a new masks version) arrives.

Thread-safe: the pipeline thread, the command handler and the MQTT thread use it.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from agent.vision.masks import Image, MaskCache, blackout
from agent.vision.motion import GateDecision, MotionGate
from agent.vision.settings import MotionSettings
from common import privacy
from common.files import atomic_write

log = logging.getLogger(__name__)

STATE_NAME = "privacy.json"
_JPEG_QUALITY = 80
_EMPTY = np.zeros((8, 8, 3), np.uint8)


class ImageWithheld(Exception):
    """The policy lets no image leave now; says why."""


@dataclass(frozen=True)
class Outgoing:
    jpeg: bytes
    marking: dict[str, Any]


def thumbnail(rgb: Image, side: int = privacy.ANON_MAX_SIDE) -> bytes:
    """``rgb`` as a JPEG at most ``side`` pixels on its longer side (area averaging)."""
    h, w = rgb.shape[:2]
    scale = min(1.0, side / max(h, w))
    size = (max(1, int(w * scale)), max(1, int(h * scale)))
    small = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
    bgr = cv2.cvtColor(small, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, _JPEG_QUALITY])
    if not ok:
        raise ImageWithheld("the thumbnail could not be encoded")
    return bytes(buf)


class PrivacyState:
    def __init__(self, state_dir: Path | None) -> None:
        self._path = state_dir / STATE_NAME if state_dir is not None else None
        self._lock = threading.Lock()
        self.section = privacy.section(privacy.DEFAULT_POLICY, 0, privacy.check_masks(None), 0)
        self.stale_version: int | None = None  # masks version when the view moved
        self._privacy = MaskCache([])
        self._motion = MaskCache([])
        self.withheld = 0  # snapshots the policy kept on the box
        self.generation = 0  # +1 at every change of the masks
        self._load()

    # ---------------------------------------------------------------- state
    def _load(self) -> None:
        if self._path is None or not self._path.exists():
            return
        try:
            saved = json.loads(self._path.read_text())
            section = privacy.check_section(saved["section"])
            stale = saved.get("stale_version")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.error("privacy state %s unreadable (%s): policy none until the server "
                      "sends it again", self._path, exc)  # fmt: skip
            section = privacy.section(privacy.NONE, 0, privacy.check_masks(None), 0)
            stale = None
        self._set(section, stale if isinstance(stale, int) else None)

    def _save(self) -> None:
        if self._path is None:
            return
        data = {"section": self.section, "stale_version": self.stale_version}
        atomic_write(str(self._path), json.dumps(data).encode(), 0o600)

    def _set(self, section: dict[str, Any], stale: int | None) -> None:
        self.stale_version = stale
        if section["masks"] != self.section.get("masks") or not self.generation:
            self.generation += 1
        self.section = section
        self._privacy = MaskCache(section["masks"][privacy.PRIVACY])
        self._motion = MaskCache(section["masks"][privacy.MOTION])

    def apply(self, raw: object) -> dict[str, Any]:
        """A desired config's privacy section (MaskError when it is wrong: nothing
        changes). Newer masks than those stale since a move clear the staleness."""
        section = privacy.check_section(raw)
        with self._lock:
            stale = self.stale_version
            if stale is not None and section["masks_version"] > stale:
                log.info("masks version %d confirmed after the move: images may leave again",
                         section["masks_version"])  # fmt: skip
                stale = None
            self._set(section, stale)
            self._save()
        log.info("privacy: policy %s (version %d), %d privacy and %d motion masks "
                 "(version %d)", section["policy"], section["policy_version"],
                 len(section["masks"][privacy.PRIVACY]), len(section["masks"][privacy.MOTION]),
                 section["masks_version"])  # fmt: skip
        return section

    def moved(self) -> None:
        """The view moved: the masks may no longer cover what they should."""
        with self._lock:
            if self.stale_version is not None:
                return
            self.stale_version = int(self.section["masks_version"])
            self._save()
        log.warning("the view moved: masks stale, no image leaves until they are confirmed")

    @property
    def stale(self) -> bool:
        return self.stale_version is not None

    @property
    def policy(self) -> str:
        """The policy in force: ``none`` while the masks are stale."""
        return privacy.NONE if self.stale else str(self.section["policy"])

    def report(self) -> dict[str, Any]:
        """For the heartbeat: the policy in force, the masks' version, stale or not, and
        the snapshots the policy kept on the box since the start."""
        s = self.section
        return {"policy": self.policy, "policy_version": s["policy_version"],
                "masks_version": s["masks_version"], "stale": self.stale,
                "withheld": self.withheld}  # fmt: skip

    def marking(self) -> dict[str, Any]:
        s = self.section
        return privacy.marking(self.policy, int(s["policy_version"]), int(s["masks_version"]))

    # ---------------------------------------------------------------- frames
    def mask_frame(self, rgb: Image) -> Image:
        """Black out the privacy masks in ``rgb`` (in place; a read-only frame is copied)."""
        cache = self._privacy
        if not cache.polygons:
            return rgb
        if not rgb.flags.writeable:
            rgb = rgb.copy()
        return blackout(rgb, cache)

    def motion_ignore(self, width: int, height: int) -> Image | None:
        """1 inside motion masks, 0 where motion counts; None without motion masks."""
        cache = self._motion
        return cache.mask(width, height) if cache.polygons else None

    @property
    def has_motion_masks(self) -> bool:
        return bool(self._motion.polygons)

    def release(self, jpeg: bytes) -> Outgoing:
        """What of an encoded (masked) snapshot may leave now (ImageWithheld if nothing)."""
        if self.policy == privacy.FULL:
            return Outgoing(jpeg, self.marking())
        if self.policy == privacy.ANONYMISED and not privacy.anonymised_problem(jpeg):
            return Outgoing(jpeg, self.marking())
        return self.outgoing(decode_jpeg(jpeg) if self.policy != privacy.NONE else _EMPTY, jpeg)

    def outgoing(self, rgb: Image, full: bytes | None = None) -> Outgoing:
        """What of ``rgb`` (already masked) may leave the box, with its marking; ``full``:
        the encoded image to send under policy full (else ``rgb`` as a JPEG)."""
        policy, mark = self.policy, self.marking()
        if policy == privacy.NONE:
            why = "the masks are stale since the view moved" if self.stale else "policy none"
            raise ImageWithheld(f"no image leaves this box: {why}")
        if policy == privacy.ANONYMISED:
            return Outgoing(thumbnail(rgb), mark)
        if full is None:
            ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR),
                                   [cv2.IMWRITE_JPEG_QUALITY, _JPEG_QUALITY])  # fmt: skip
            if not ok:
                raise ImageWithheld("the image could not be encoded")
            full = bytes(buf)
        return Outgoing(full, mark)


def decode_jpeg(data: bytes) -> Image:
    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if arr is None:
        raise ValueError("not a decodable image")
    return np.ascontiguousarray(cv2.cvtColor(arr, cv2.COLOR_BGR2RGB))


# ---------------------------------------------------------------- the pipeline's seams
Emit = Callable[[str, dict[str, Any], float, str], "str | None"]


class MaskedGate(MotionGate):
    """The motion gate that never looks inside motion masks: they are the gate's ``mask``
    (ignored for motion and for the camera-shift estimate), with any mask given too."""

    def __init__(self, settings: MotionSettings, guard: PrivacyState) -> None:
        super().__init__(settings)
        self.guard = guard

    def decide(self, grey: Image, t: float, mask: Image | None = None) -> GateDecision:
        ignore = self.guard.motion_ignore(grey.shape[1], grey.shape[0])
        if ignore is not None:
            mask = ignore if mask is None else np.maximum(mask, ignore)
        return super().decide(grey, t, mask)


def guard_emit(guard: PrivacyState, emit: Emit) -> Emit:
    """``emit`` behind the policy: a snapshot leaves as the policy says (or not at all,
    counted in ``guard.withheld``), marked; a ``moved`` scene problem makes the masks
    stale."""

    def guarded(event_type: str, data: dict[str, Any], ts: float, cls: str) -> str | None:
        if event_type == "scene.problem" and data.get("condition") == "moved":
            guard.moved()
        if event_type == "snapshot":
            try:
                out = guard.release(base64.b64decode(str(data["jpeg"])))
            except ImageWithheld:
                guard.withheld += 1
                return None
            data = {**data, "jpeg": base64.b64encode(out.jpeg).decode(), "privacy": out.marking}
        return emit(event_type, data, ts, cls)

    return guarded


def masked_image(data: bytes, masks: privacy.Masks) -> bytes:
    """An encoded image with its privacy masks blacked out, as PNG (the commissioning
    reference frame: the technician's tool signs this, never the unmasked frame)."""
    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if arr is None:
        raise ValueError("not a decodable image")
    bgr = np.ascontiguousarray(arr, np.uint8)
    blackout(bgr, MaskCache(masks[privacy.PRIVACY]))
    ok, buf = cv2.imencode(".png", bgr)
    if not ok:
        raise ValueError("the masked frame could not be encoded")
    return bytes(buf)
