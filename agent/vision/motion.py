"""The motion gate: decides, from a small grey frame, whether and where the detector runs.

A running-average background is kept. Camera motion is taken out first: the global shift
of the frame against the background (phase correlation, sub-pixel) is estimated and the
frame is moved back by it before differencing, so a pole swaying by a few pixels is not
motion; the background stays in the camera's rest position. The difference, with an
optional mask (``decide(..., mask=)``: non-zero pixels are ignored, e.g. a privacy mask or
a tree the site does not care about), is thresholded, opened (specks of rain, snow and
noise vanish) and dilated, and gives moving regions. A change of most of the frame at once
(a bump or re-aim larger than ``max_shift``, an exposure jump, an infrared cut filter
switching) is a *global change*: the background restarts from this frame and the detector
sees the whole frame once, instead of a storm of motion. The detector runs over one region
around all the moving regions (padded, grown to a minimum size and to the model's square
input), over the whole frame when the motion covers most of it, and over the whole frame
on a keyframe every ``keyframe_s`` seconds so that objects that stopped are still seen. No
motion and no keyframe: no invocation.
"""

from __future__ import annotations

import math
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
    global_change: bool = False  # the whole view changed at once (background restarted)
    shift: tuple[float, float] = (0.0, 0.0)  # camera shift taken out, pixels of the grey frame


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


def estimate_shift(
    background: npt.NDArray[np.float32],
    frame: npt.NDArray[np.float32],
    window: npt.NDArray[np.float32],
) -> tuple[float, float, float]:
    """(dx, dy, response): how far ``frame`` is shifted against ``background``, in pixels,
    and the phase correlation's peak (0..1, low: no trustworthy shift)."""
    # copies: OpenCV 5's phaseCorrelate applies the window to its inputs in place
    (dx, dy), response = cv2.phaseCorrelate(background.copy(), frame.copy(), window)
    return float(dx), float(dy), float(response)


class MotionGate:
    def __init__(self, settings: MotionSettings) -> None:
        self.s = settings
        self._background: npt.NDArray[np.float32] | None = None
        self._window: npt.NDArray[np.float32] | None = None
        self._last_key: float | None = None
        self.frames = 0
        self.runs = 0
        self.global_changes = 0
        self.last_shift = (0.0, 0.0)
        self.last_moving = 0.0  # fraction of the frame that moved (after compensation)
        self._global = False
        self._last_mask: npt.NDArray[np.uint8] | None = None
        self._prev: npt.NDArray[np.float32] | None = None
        self.specks = 0  # separate moving specks in the last frame
        self.rain = False  # so many that it is rain or snow (a wider opening is used)
        self._speck_avg = 0.0
        self._kernel3 = np.ones((3, 3), np.uint8)
        self._kernel5 = np.ones((5, 5), np.uint8)
        self._kernel9 = np.ones((9, 9), np.uint8)

    def reset(self) -> None:
        self._background = None

    def _start(self, blurred: npt.NDArray[np.float32]) -> None:
        self._background = blurred.copy()
        self._prev = None
        h, w = blurred.shape[:2]
        self._window = np.asarray(cv2.createHanningWindow((w, h), cv2.CV_32F), np.float32)

    def _moving(
        self,
        frame: npt.NDArray[np.float32],
        bg: npt.NDArray[np.float32],
        border: tuple[int, int],
        mask: npt.NDArray[np.uint8] | None,
    ) -> npt.NDArray[np.uint8]:
        """Pixels of ``frame`` that differ from ``bg`` by more than the threshold (0/1),
        none within ``border`` (x, y) pixels of the edges (uncovered by a shift) or under
        ``mask``."""
        moving = (cv2.absdiff(frame, bg) > self.s.threshold).astype(np.uint8)
        if mask is not None:
            moving[mask != 0] = 0
        bx, by = border
        if bx or by:
            h, w = moving.shape[:2]
            moving[:by, :] = 0
            moving[h - by :, :] = 0
            moving[:, :bx] = 0
            moving[:, w - bx :] = 0
        return moving

    def _compensated(
        self,
        blurred: npt.NDArray[np.float32],
        bg: npt.NDArray[np.float32],
        mask: npt.NDArray[np.uint8] | None,
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.uint8], float, float, bool]:
        """The frame moved back into the background's position when that explains the
        difference better than no shift at all (a large object moving across the view can
        pull the phase correlation its way; then nothing is compensated):
        (frame, moving pixels, dx, dy, moved further than ``max_shift``)."""
        assert self._window is not None
        h, w = blurred.shape[:2]
        probe = blurred
        for hide in (self._last_mask, mask):  # what moved last frame, what is masked:
            if hide is not None:  # the background there, the shift is the camera's
                probe = probe.copy() if probe is blurred else probe
                np.copyto(probe, bg, where=hide != 0)
        dx, dy, response = estimate_shift(bg, probe, self._window)
        # the outermost pixels are not judged: a shift uncovers them, the background's
        # own edges are smeared by earlier shifts
        border = (math.ceil(abs(dx)) + 2, math.ceil(abs(dy)) + 2)
        plain = self._moving(blurred, bg, (2, 2), mask)
        if response < self.s.shift_min_response or math.hypot(dx, dy) < 0.25:
            return blurred, plain, 0.0, 0.0, False
        m = np.array([[1.0, 0.0, -dx], [0.0, 1.0, -dy]], np.float32)
        moved = np.asarray(
            cv2.warpAffine(
                blurred, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
            ),
            np.float32,
        )
        shifted = self._moving(moved, bg, border, mask)
        plain_inner = int(plain[border[1] : h - border[1], border[0] : w - border[0]].sum())
        if int(shifted.sum()) <= plain_inner:
            return moved, shifted, dx, dy, math.hypot(dx, dy) > self.s.max_shift * w
        return blurred, plain, 0.0, 0.0, False

    def moving_regions(
        self, grey: npt.NDArray[np.uint8], mask: npt.NDArray[np.uint8] | None = None
    ) -> list[Box]:
        """Moving regions of ``grey`` against the background (camera shift taken out,
        ``mask``'s non-zero pixels ignored), then update the background. A global change
        restarts the background and sets ``self._global``."""
        self._global = False
        if mask is not None and mask.shape != grey.shape[:2]:
            raise ValueError(f"motion mask is {mask.shape}, the frame {grey.shape[:2]}")
        blurred = cv2.GaussianBlur(grey, (5, 5), 0).astype(np.float32)
        bg = self._background
        self._last_mask, last = None, self._last_mask
        if bg is None or bg.shape != blurred.shape:
            self._start(blurred)
            return []
        self._last_mask = last
        # exposure: an auto-exposure step or a cloud changes every pixel by the same factor;
        # the frame is scaled to the background's mean level before it is compared
        level, bg_level = float(cv2.mean(blurred)[0]), float(cv2.mean(bg)[0])
        if level > 1.0 and abs(bg_level / level - 1.0) > 0.03:
            blurred *= bg_level / level
        aligned, mask_img, dx, dy, too_far = self._compensated(blurred, bg, mask)
        self.last_shift = (dx, dy)
        h, w = grey.shape[:2]
        if too_far:  # a bump or a re-aim, not sway
            return self._restart(blurred)
        prev, self._prev = self._prev, aligned
        cv2.accumulateWeighted(aligned, bg, self.s.background_alpha)
        if prev is not None and prev.shape == aligned.shape and mask_img.any():
            # ghosts: pixels unlike the background but like the previous frame (what a
            # passer-by uncovered, a car that parked) join the background fast, so the gate
            # closes soon after the last motion instead of after a slow fade
            still = cv2.absdiff(aligned, prev) < self.s.threshold / 2
            ghost = (mask_img != 0) & still
            cv2.accumulateWeighted(aligned, bg, 0.5, ghost.astype(np.uint8))
        self._last_mask = None
        moving = float(np.count_nonzero(mask_img)) / (w * h)
        self.last_moving = moving
        if moving > self.s.global_change_above:
            return self._restart(blurred)
        if moving == 0.0:
            self.specks = 0
            self._speck_avg *= 0.8
            self.rain = self.rain and self._speck_avg >= self.s.rain_specks * 0.5
            return []
        mask_img = self._without_specks(mask_img)
        if not mask_img.any():
            return []
        mask_img = np.asarray(cv2.dilate(mask_img, self._kernel5, iterations=2), np.uint8)
        self._last_mask = mask_img
        n, _labels, stats, _centroids = cv2.connectedComponentsWithStats(mask_img, connectivity=8)
        min_px = self.s.min_area * w * h
        out: list[Box] = []
        for i in range(1, n):
            x, y, bw, bh, area = (int(v) for v in stats[i])
            if area >= min_px:  # back from the background's position to the frame's
                x0, y0 = min(max(x + dx, 0.0), w), min(max(y + dy, 0.0), h)
                x1, y1 = min(max(x + bw + dx, 0.0), w), min(max(y + bh + dy, 0.0), h)
                if x1 > x0 and y1 > y0:
                    out.append((x0 / w, y0 / h, x1 / w, y1 / h))
        return out

    def _without_specks(self, mask_img: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
        """The moving pixels less specks. Opening: specks of rain, snow and noise (a pixel or
        two wide) are not regions; when there are many of them all over the view (rain,
        snow: ``self.rain``), wider drops near the lens are not either."""
        h, w = mask_img.shape[:2]
        opened = np.asarray(cv2.morphologyEx(mask_img, cv2.MORPH_OPEN, self._kernel3), np.uint8)
        # specks: what the opening removed away from anything it kept (a walker's own
        # fragments lie next to the walker; rain is everywhere)
        near = np.asarray(cv2.dilate(opened, self._kernel9), np.uint8)
        removed = ((mask_img != 0) & (near == 0)).astype(np.uint8)
        n, _lab, _st, centres = cv2.connectedComponentsWithStats(removed, connectivity=8)
        specks = n - 1
        if specks:  # rain and snow fall over the whole view, not in one corner of it
            cells = {(int(cx * 4 / w), int(cy * 4 / h)) for cx, cy in centres[1:]}
            if len(cells) < 6:  # of the 16 cells of a 4 x 4 grid
                specks = 0
        self.specks = specks
        self._speck_avg += 0.2 * (specks - self._speck_avg)
        self.rain = self._speck_avg >= self.s.rain_specks * (0.5 if self.rain else 1.0)
        if self.rain:
            return np.asarray(cv2.morphologyEx(mask_img, cv2.MORPH_OPEN, self._kernel5), np.uint8)
        return opened

    def _restart(self, blurred: npt.NDArray[np.float32]) -> list[Box]:
        self._start(blurred)
        self._global = True
        self.global_changes += 1
        return []

    def whole_frame(self, t: float) -> GateDecision:
        """Detect over the whole frame without looking for motion (``always_detect``, on
        frames where nothing else needs the moving regions)."""
        self.frames += 1
        self.runs += 1
        self._last_key = t
        return GateDecision(True, FULL, (), True)

    def decide(
        self, grey: npt.NDArray[np.uint8], t: float, mask: npt.NDArray[np.uint8] | None = None
    ) -> GateDecision:
        """Whether and where to detect on this frame (``t``: seconds, monotonic); ``mask``
        (same shape as ``grey``, non-zero: ignore) hides parts of the view from the gate."""
        self.frames += 1
        regions = self.moving_regions(grey, mask)
        shift = self.last_shift
        keyframe = self._last_key is None or t - self._last_key >= self.s.keyframe_s
        if self.s.always_detect or keyframe or self._global:
            self._last_key = t
            self.runs += 1
            return GateDecision(True, FULL, tuple(regions), True, self._global, shift)
        if not regions:
            return GateDecision(False, FULL, (), False, False, shift)
        h, w = grey.shape[:2]
        roi = grow_roi(regions, w, h, self.s.pad, self.s.min_roi)
        if (roi[2] - roi[0]) * (roi[3] - roi[1]) >= self.s.full_frame_above:
            roi = FULL
        self.runs += 1
        return GateDecision(True, roi, tuple(regions), False, False, shift)
