"""The motion gate: decides, from a small grey frame, whether and where the detector runs.

A running-average background is kept; a frame's difference to it, thresholded and dilated,
gives moving regions. The detector runs over one region around all of them (padded, grown
to a minimum size and to the model's square input), over the whole frame when the motion
covers most of it, and over the whole frame on a keyframe every ``keyframe_s`` seconds so
that objects that stopped are still seen. No motion and no keyframe: no invocation.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt

from agent.vision.settings import MotionSettings

Box = tuple[float, float, float, float]
FULL: Box = (0.0, 0.0, 1.0, 1.0)


@dataclass(frozen=True)
class GateDecision:
    run: bool
    roi: Box  # where the detector runs (fractions of the frame)
    regions: tuple[Box, ...]  # moving regions found
    keyframe: bool


def grow_roi(regions: list[Box], frame_w: int, frame_h: int, pad: float, min_side: float) -> Box:
    """One box around ``regions`` with ``pad`` margin, square in pixels, at least
    ``min_side`` of the shorter frame side, moved (not cut) to stay inside the frame."""
    x0 = min(r[0] for r in regions) - pad
    y0 = min(r[1] for r in regions) - pad
    x1 = max(r[2] for r in regions) + pad
    y1 = max(r[3] for r in regions) + pad
    w_px = (x1 - x0) * frame_w
    h_px = (y1 - y0) * frame_h
    side = max(w_px, h_px, min_side * min(frame_w, frame_h))
    side = min(side, max(frame_w, frame_h))
    cx = (x0 + x1) / 2 * frame_w
    cy = (y0 + y1) / 2 * frame_h
    half_w = min(side, frame_w) / 2
    half_h = min(side, frame_h) / 2
    cx = min(max(cx, half_w), frame_w - half_w)
    cy = min(max(cy, half_h), frame_h - half_h)
    return (
        (cx - half_w) / frame_w,
        (cy - half_h) / frame_h,
        (cx + half_w) / frame_w,
        (cy + half_h) / frame_h,
    )


class MotionGate:
    def __init__(self, settings: MotionSettings) -> None:
        self.s = settings
        self._background: npt.NDArray[np.float32] | None = None
        self._last_key: float | None = None
        self.frames = 0
        self.runs = 0

    def reset(self) -> None:
        self._background = None

    def moving_regions(self, grey: npt.NDArray[np.uint8]) -> list[Box]:
        """Moving regions of ``grey`` against the background, then update the background."""
        blurred = cv2.GaussianBlur(grey, (5, 5), 0).astype(np.float32)
        if self._background is None or self._background.shape != blurred.shape:
            self._background = blurred.copy()
            return []
        diff = cv2.absdiff(blurred, self._background)
        cv2.accumulateWeighted(blurred, self._background, self.s.background_alpha)
        mask = (diff > self.s.threshold).astype(np.uint8)
        if not mask.any():
            return []
        mask = np.asarray(cv2.dilate(mask, np.ones((5, 5), np.uint8), iterations=2), np.uint8)
        h, w = grey.shape[:2]
        n, _labels, stats, _centroids = cv2.connectedComponentsWithStats(mask, connectivity=8)
        min_px = self.s.min_area * w * h
        out: list[Box] = []
        for i in range(1, n):
            x, y, bw, bh, area = (int(v) for v in stats[i])
            if area >= min_px:
                out.append((x / w, y / h, (x + bw) / w, (y + bh) / h))
        return out

    def whole_frame(self, t: float) -> GateDecision:
        """Detect over the whole frame without looking for motion (``always_detect``, on
        frames where nothing else needs the moving regions)."""
        self.frames += 1
        self.runs += 1
        self._last_key = t
        return GateDecision(True, FULL, (), True)

    def decide(self, grey: npt.NDArray[np.uint8], t: float) -> GateDecision:
        """Whether and where to detect on this frame (``t``: seconds, monotonic)."""
        self.frames += 1
        regions = self.moving_regions(grey)
        keyframe = self._last_key is None or t - self._last_key >= self.s.keyframe_s
        if self.s.always_detect or keyframe:
            self._last_key = t
            self.runs += 1
            return GateDecision(True, FULL, tuple(regions), True)
        if not regions:
            return GateDecision(False, FULL, (), False)
        h, w = grey.shape[:2]
        roi = grow_roi(regions, w, h, self.s.pad, self.s.min_roi)
        if (roi[2] - roi[0]) * (roi[3] - roi[1]) >= self.s.full_frame_above:
            roi = FULL
        self.runs += 1
        return GateDecision(True, roi, tuple(regions), False)
