"""The detection pipeline for one camera: frame -> scene health -> motion gate -> detector
(only where and when there is motion, plus keyframes) -> tracker -> counts and events.

``Pipeline`` holds the deciding parts and calls ``emit(type, data, ts, cls)`` for every
event (the service hands them to the outbox). It does no I/O of its own except the
detector's inference and JPEG encoding of snapshots.
"""

from __future__ import annotations

import base64
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from agent.link.outbox import EVENT, SNAPSHOT
from agent.vision import scene as sc
from agent.vision.counting import Counter
from agent.vision.detector import Box, Detection, Detector
from agent.vision.frames import decode_image, normalise
from agent.vision.light import LOW_LIGHT, LightModel
from agent.vision.motion import FULL
from agent.vision.privacy import MaskedGate, PrivacyState, guard_emit
from agent.vision.settings import PipelineSettings
from agent.vision.tracker import END, NEW, TrackChange, Tracker
from firmware import contract

log = logging.getLogger(__name__)

__all__ = ["FrameResult", "Pipeline", "decode_image", "grey_of", "jpeg_snapshot"]

Image = npt.NDArray[np.uint8]
Emit = Callable[[str, dict[str, Any], float, str], str | None]

# room for the JSON around a snapshot's base64 text in an event payload
_SNAPSHOT_OVERHEAD = 1024
_SNAPSHOT_MAX = (contract.KINDS["event"][4] - _SNAPSHOT_OVERHEAD) * 3 // 4
# seconds between two comparisons with the reference frame (a moved view is not urgent)
_COMPARE_S = 1.0
# seconds between two scene-health analyses (conditions are held for seconds anyway)
_SCENE_EVERY_S = 0.25
# seconds without motion before the pipeline takes its own reference frame
_REFERENCE_STILL_S = 2.0


def grey_of(img: Image, width: int, fast: bool = False) -> Image:
    """A grey copy ``width`` pixels wide (aspect kept) of an RGB or grey image. ``fast``
    scales the colour image first with linear interpolation (a quarter of the time; the
    motion gate blurs its frame anyway), else the grey image with area averaging."""
    h, w = img.shape[:2]
    height = max(8, round(h * width / w))
    if fast and img.ndim == 3:
        small = cv2.resize(img, (width, height), interpolation=cv2.INTER_LINEAR)
        return np.ascontiguousarray(cv2.cvtColor(small, cv2.COLOR_RGB2GRAY))
    grey = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY) if img.ndim == 3 else img
    if (w, h) == (width, height):
        return np.ascontiguousarray(grey)
    return np.ascontiguousarray(cv2.resize(grey, (width, height), interpolation=cv2.INTER_AREA))


def jpeg_snapshot(rgb: Image, box: Box, side: int, limit: int = _SNAPSHOT_MAX) -> bytes | None:
    """The box (with a small margin) as a JPEG no larger than ``limit`` bytes."""
    h, w = rgb.shape[:2]
    mx, my = (box[2] - box[0]) * 0.1, (box[3] - box[1]) * 0.1
    x0, y0 = max(0, int((box[0] - mx) * w)), max(0, int((box[1] - my) * h))
    x1, y1 = min(w, int((box[2] + mx) * w) + 1), min(h, int((box[3] + my) * h) + 1)
    if x1 - x0 < 2 or y1 - y0 < 2:
        return None
    crop = cv2.cvtColor(rgb[y0:y1, x0:x1], cv2.COLOR_RGB2BGR)
    for _ in range(6):
        scale = min(1.0, side / max(crop.shape[:2]))
        if scale < 1.0:
            crop = cv2.resize(crop, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        for quality in (80, 60, 40):
            ok, buf = cv2.imencode(".jpg", crop, [cv2.IMWRITE_JPEG_QUALITY, quality])
            if ok and len(buf) <= limit:
                return bytes(buf)
        side = max(16, side // 2)
    return None


def cut_by_roi(box: Box, roi: Box, margin: float = 0.01) -> bool:
    """True when ``box`` reaches an edge of ``roi`` that is not the frame's edge: the
    detector saw only part of that object (a parked car at the border of a region grown
    around a passer-by); its box is wrong, and it would start a second track."""
    for i, (b, r, frame_edge) in enumerate(zip(box, roi, (0.0, 0.0, 1.0, 1.0), strict=True)):
        if abs(r - frame_edge) <= margin:
            continue
        if (i < 2 and b <= r + margin) or (i >= 2 and b >= r - margin):
            return True
    return False


def _r(box: Box) -> list[float]:
    return [round(v, 4) for v in box]


@dataclass(frozen=True)
class FrameResult:
    detected: bool
    keyframe: bool
    detections: int
    changes: int


class Pipeline:
    def __init__(
        self,
        settings: PipelineSettings,
        detector: Detector | None,
        emit: Emit,
        start_wall: float,
        reference: Image | None = None,
        privacy: PrivacyState | None = None,
    ) -> None:
        self.s = settings
        self.detector = detector
        # issue 20: privacy masks, motion masks, what of a snapshot leaves (agent/vision/privacy)
        self.privacy = privacy if privacy is not None else PrivacyState(None)
        self.emit = guard_emit(self.privacy, emit)
        self.gate = MaskedGate(settings.motion, self.privacy)
        self.tracker = Tracker(settings.tracker)
        self.counter = Counter(
            settings.lines, settings.zones, settings.counts_every_s, settings.anchor, start_wall
        )
        self.health = sc.SceneHealth(settings.scene)
        self.light = LightModel(settings.scene)
        if reference is not None:
            reference = self.privacy.mask_frame(reference)
        self.reference = sc.Reference(reference) if reference is not None else None
        # one reference per lighting mode: the infrared view is not the daylight view
        self._references: dict[str, sc.Reference | None] = {"colour": self.reference}
        self.new_reference = False  # set when the pipeline took its own reference frame
        self._masks_seen = self.privacy.generation  # the reference is masked with these
        self._last_compare = -_COMPARE_S
        self._last_scene = -_SCENE_EVERY_S
        self._still_since: float | None = None
        self._shift: tuple[float | None, float | None] = (None, None)
        self._classes = set(settings.detector.classes) if settings.detector else set()
        self._prev_grey: Image | None = None
        self._frame_conditions: set[str] = set()
        self.measures: sc.SceneMeasures | None = None
        self.frames = 0
        self.invokes = 0
        self._infer_ms: deque[float] = deque(maxlen=50)
        self._unreliable_seen: set[str] = set()  # in the current counts interval

    # ---------------------------------------------------------------- per frame
    def process(self, rgb: Image, t: float, wall: float) -> FrameResult:
        """One decoded frame captured at ``t`` (monotonic) and ``wall`` (epoch). The one
        place a frame enters: grey and RGBA are converted to RGB, anything else raises
        ``frames.BadFrame`` before any state changes (``agent.vision.frames``)."""
        rgb = self.privacy.mask_frame(normalise(rgb))  # before anything looks at it
        if self.reference is not None and self._masks_seen != self.privacy.generation:
            self.reference = sc.Reference(
                self.privacy.mask_frame(self.reference.image.astype(np.uint8))
            )
            # the other lighting mode's reference is taken again, under the new masks
            self._references = {LightModel.key(self.light.mode): self.reference}
        self._masks_seen = self.privacy.generation
        self.frames += 1
        scene_due = t - self._last_scene >= _SCENE_EVERY_S
        if self.s.motion.always_detect and not scene_due:
            decision = self.gate.whole_frame(t)  # the regions only matter to scene health
        else:
            decision = self.gate.decide(grey_of(rgb, self.s.motion.width, fast=True), t)
        changes = 0
        if scene_due:
            self._last_scene = t
            grey = grey_of(rgb, self.s.scene.width)
            colour = sc.colourfulness(rgb)
            changes += self._scene(grey, colour, not decision.regions, t, wall)
        found: list[Detection] = []
        if decision.run and self.detector is not None:
            found = self.detector.detect(rgb, decision.roi)
            self.invokes += 1
            self._infer_ms.append(self.detector.last_ms)
            if self._classes:
                found = [d for d in found if d.label in self._classes]
            cut: list[Detection] = []
            if decision.roi != FULL:
                cut = [d for d in found if cut_by_roi(d.box, decision.roi)]
                found = [d for d in found if d not in cut]
            track_changes = self.tracker.update(
                found,
                decision.roi,
                t,
                wall,
                lambda box: jpeg_snapshot(rgb, box, self.s.tracker.snapshot_side),
                cut,
            )
            self._count_moves(t)
            changes += self._track_events(track_changes, wall)
        changes += self._housekeeping(t, wall)
        return FrameResult(decision.run, decision.keyframe, len(found), changes)

    def _scene(self, grey: Image, colour: float, still: bool, t: float, wall: float) -> int:
        """Scene health of this frame. The reference is compared only on a still frame (no
        motion: passing traffic is not a moved camera), at most every _COMPARE_S; each
        lighting mode (colour, infrared) has its own."""
        key_before = LightModel.key(self.light.mode)
        mode, switched = self.light.observe_mode(float(grey.mean()), colour)
        if switched:  # the infrared cut filter moved: a mode change, not a moved camera
            self._references[key_before] = self.reference
            self.reference = self._references.get(LightModel.key(mode))
            self._shift = (None, None)
            self._still_since = None
        if not still or self._still_since is None:
            self._still_since = None if not still else t
        if (
            self.reference is None
            and self._still_since is not None
            and t - self._still_since >= _REFERENCE_STILL_S
        ):  # the reference is an empty scene: nothing moved for a while
            self.reference = sc.Reference(grey)
            self.new_reference = LightModel.key(self.light.mode) == "colour"  # the one saved
        compare = self.reference is not None and still and t - self._last_compare >= _COMPARE_S
        m = sc.measure(grey, self._prev_grey, self.reference if compare else None, colour)
        self._prev_grey = grey
        before = self._frame_conditions
        if compare:
            self._last_compare = t
            self._shift = (m.shift, m.correlation)
        else:
            m = replace(m, shift=self._shift[0], correlation=self._shift[1])
        self.measures = m
        now = sc.conditions_now(m, self.s.scene, self.light.expect(wall))
        if not compare:  # not judged on this frame: keep what the last comparison said
            now.discard(sc.MOVED)
            if sc.MOVED in before:
                now.add(sc.MOVED)
        self._frame_conditions = now
        self._unreliable_seen.update(self.unreliable())
        healthy = not now & {sc.COVERED, sc.BLUR, sc.FROZEN, sc.MOVED, sc.BRIGHT}
        self.light.learn(m.structure, m.edges, m.brightness, t, wall, healthy)
        return self._scene_changes(self.health.update(set(now), t), wall)

    def tick(self, t: float, wall: float, camera_ok: bool) -> int:
        """Called when no frame came: camera state, track expiry, counts interval."""
        now = set(self._frame_conditions)
        if not camera_ok:
            now.add(sc.NO_FRAMES)
            now.discard(sc.FROZEN)  # no frames is not a frozen image
        changes = self._scene_changes(self.health.update(now, t), wall)
        return changes + self._housekeeping(t, wall)

    def close(self, wall: float) -> None:
        """End every track and send the counts of the interval so far."""
        self._track_events(self.tracker.end_all(), wall)
        self._flush_counts(wall)

    # ---------------------------------------------------------------- stats
    def infer_ms(self) -> float | None:
        if not self._infer_ms:
            return None
        return float(np.median(np.asarray(self._infer_ms)))

    def problems(self) -> list[str]:
        return self.health.problems()

    def unreliable(self) -> list[str]:
        """Why the detector's results cannot be trusted now (empty: they can): ``low_light``
        (a dark colour image), ``rain`` (rain or snow in front of the lens). A quiet count
        then does not mean an empty road."""
        why = []
        if self.light.mode == LOW_LIGHT:
            why.append(LOW_LIGHT)
        if self.gate.rain:
            why.append("rain")
        return why

    # ---------------------------------------------------------------- internals
    def _housekeeping(self, t: float, wall: float) -> int:
        n = self._track_events(self.tracker.expire(t), wall)
        if self.counter.due(wall):
            n += self._flush_counts(wall)
        return n

    def _flush_counts(self, wall: float) -> int:
        data = self.counter.flush(wall)
        unreliable, self._unreliable_seen = sorted(self._unreliable_seen), set()
        if not (self.s.lines or self.s.zones):
            return 0
        if unreliable:  # the detector was unreliable for part of the interval
            data["unreliable"] = unreliable
        self.emit("counts", data, wall, EVENT)
        return 1

    def _count_moves(self, t: float) -> None:
        for track in self.tracker.tracks.values():
            if track.last_t == t and track.prev_box is not None:
                self.counter.move(track.label, track.prev_box, track.box)
                track.prev_box = None

    def _track_events(self, changes: list[TrackChange], wall: float) -> int:
        n = 0
        for ch in changes:
            tr = ch.track
            if ch.kind == END:
                data: dict[str, Any] = {
                    "track": tr.id,
                    "label": tr.label,
                    "best_score": round(tr.best_score, 3),
                    "box": _r(tr.best_box),
                    "first_ts": round(tr.first_wall, 3),
                    "last_ts": round(tr.last_wall, 3),
                    "duration_s": round(tr.last_wall - tr.first_wall, 3),
                    "hits": tr.hits,
                }
                end_id = self.emit("track.end", data, wall, EVENT)
                n += 1
                if tr.snapshot is not None:
                    n += self._snapshot(
                        tr.id, tr.label, tr.best_score, tr.best_box, tr.snapshot, end_id, wall
                    )
            else:
                data = {
                    "track": tr.id,
                    "label": tr.label,
                    "score": round(tr.score, 3),
                    "box": _r(tr.box),
                    "hits": tr.hits,
                }
                self.emit("track.new" if ch.kind == NEW else "track.update", data, wall, EVENT)
                n += 1
        return n

    def _snapshot(
        self,
        track: int,
        label: str,
        score: float,
        box: Box,
        jpeg: bytes,
        of: str | None,
        wall: float,
    ) -> int:
        data: dict[str, Any] = {
            "track": track,
            "label": label,
            "score": round(score, 3),
            "box": _r(box),
            "of": of or "",
            "jpeg": base64.b64encode(jpeg).decode("ascii"),
        }
        self.emit("snapshot", data, wall, SNAPSHOT)
        return 1

    def _scene_changes(self, changes: list[sc.SceneChange], wall: float) -> int:
        for ch in changes:
            data: dict[str, Any] = {"condition": ch.condition}
            m = self.measures
            if m is not None:
                data["brightness"] = round(m.brightness, 1)
                data["spread"] = round(m.spread, 1)
                data["sharpness"] = round(m.sharpness, 1)
                if m.shift is not None and m.correlation is not None:
                    data["shift"] = round(m.shift, 4)
                    data["correlation"] = round(m.correlation, 3)
            kind = "scene.problem" if ch.active else "scene.cleared"
            if ch.active:
                log.warning("scene problem: %s", ch.condition)
            else:
                log.info("scene problem cleared: %s", ch.condition)
            self.emit(kind, data, wall, EVENT)
        return len(changes)
