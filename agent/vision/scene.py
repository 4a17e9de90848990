"""Scene and camera health: measures of a grey frame, and conditions held over time.

Measures (``measure``): mean grey level, spread (standard deviation), sharpness (variance
of the Laplacian), structure (spread of an 80-pixel-wide copy, where sensor noise is
averaged away), edges (sharpness / spread², the same in any light), colourfulness, change
since the previous frame, and, against the reference frame, the shift (phase correlation)
and the correlation of the two images.

Conditions: ``dark`` (darker than this hour of the day usually is), ``bright``, ``blur``
(edges gone: below ``blur_below`` or a share of the learned edges), ``covered`` (structure
gone: uniform, or a share of the learned structure), ``frozen`` (no change at all: a real
sensor always has noise), ``moved`` (shifted or no longer like the reference), and
``no_frames`` (from the capture). The learned values come from ``agent.vision.light``:
night, dusk and infrared are not problems. ``SceneHealth`` reports a condition
once it has held for its time and clears it once it has been gone for ``clear_after_s``:
each report and each clearing is a change the pipeline turns into an event.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt

from agent.vision.light import Expectation
from agent.vision.settings import SceneSettings

Grey = npt.NDArray[np.uint8]

DARK = "dark"
BRIGHT = "bright"
BLUR = "blur"
COVERED = "covered"
FROZEN = "frozen"
MOVED = "moved"
NO_FRAMES = "no_frames"
CONDITIONS = (NO_FRAMES, FROZEN, COVERED, DARK, BRIGHT, BLUR, MOVED)


@dataclass(frozen=True)
class SceneMeasures:
    brightness: float
    spread: float
    sharpness: float
    structure: float  # spread of a small copy (noise averaged out)
    edges: float  # sharpness / (spread² + 1): scale-free
    colour: float | None  # mean |R-G| + |G-B| of a small copy; None: not measured
    change: float | None  # mean absolute change since the previous frame
    shift: float | None  # shift from the reference, fraction of the frame width
    correlation: float | None  # normalised correlation with the reference


@dataclass(frozen=True)
class SceneChange:
    condition: str
    active: bool  # True: now reported; False: cleared
    since: float  # when it began (active) or ended (cleared), monotonic seconds


def _correlation(a: npt.NDArray[np.float32], b: npt.NDArray[np.float32]) -> float:
    a = a - a.mean()
    b = b - b.mean()
    den = math.sqrt(float((a * a).sum()) * float((b * b).sum()))
    return float((a * b).sum()) / den if den > 0 else 0.0


class Reference:
    """The commissioning reference frame, prepared for comparison."""

    def __init__(self, grey: Grey) -> None:
        self.shape = grey.shape
        self.image = grey.astype(np.float32)
        self._window = cv2.createHanningWindow((grey.shape[1], grey.shape[0]), cv2.CV_32F)

    def compare(self, grey: Grey) -> tuple[float, float]:
        """(shift as a fraction of the width, correlation) of ``grey`` against the reference."""
        cur = grey.astype(np.float32)
        if cur.shape != self.image.shape:
            cur = np.asarray(cv2.resize(cur, (self.shape[1], self.shape[0])), np.float32)
        # copies: OpenCV 5.0's phaseCorrelate applies the window to its inputs in place
        (dx, dy), _response = cv2.phaseCorrelate(self.image.copy(), cur.copy(), self._window)
        shift = math.hypot(dx, dy) / self.shape[1]
        return shift, _correlation(self.image, cur)


def colourfulness(rgb: npt.NDArray[np.uint8]) -> float:
    """Mean |R - G| + |G - B| of a small copy: about 0 for an infrared (grey) image."""
    # linear to 160 then area to 40: sensor noise (independent per channel) averaged away,
    # at a fraction of one area resize of the whole frame
    small = cv2.resize(rgb, (160, 120), interpolation=cv2.INTER_LINEAR)
    small = cv2.resize(small, (40, 30), interpolation=cv2.INTER_AREA)
    rg = cv2.absdiff(small[:, :, 0], small[:, :, 1])
    gb = cv2.absdiff(small[:, :, 1], small[:, :, 2])
    return float(rg.mean()) + float(gb.mean())


def measure(
    grey: Grey,
    previous: Grey | None,
    reference: Reference | None,
    colour: float | None = None,
) -> SceneMeasures:
    change = None
    if previous is not None and previous.shape == grey.shape:
        change = float(cv2.absdiff(grey, previous).mean())
    shift = corr = None
    if reference is not None:
        shift, corr = reference.compare(grey)
    h, w = grey.shape[:2]
    small = cv2.resize(grey, (80, max(2, round(h * 80 / w))), interpolation=cv2.INTER_AREA)
    spread = float(grey.std())
    # a 3x3 Gaussian first: sensor noise alone must not pass for sharp edges
    sharpness = float(cv2.Laplacian(cv2.GaussianBlur(grey, (3, 3), 0), cv2.CV_32F).var())
    return SceneMeasures(
        brightness=float(grey.mean()),
        spread=spread,
        sharpness=sharpness,
        structure=float(small.std()),
        edges=sharpness / (spread * spread + 1.0),
        colour=colour,
        change=change,
        shift=shift,
        correlation=corr,
    )


def conditions_now(
    m: SceneMeasures, s: SceneSettings, expect: Expectation | None = None
) -> set[str]:
    """The conditions this one frame shows (before any holding time), against what the
    view usually shows in this light (``expect``, from ``light.LightModel``; without it
    only the absolute limits apply, and dark is never a problem)."""
    now: set[str] = set()
    e = expect or Expectation(None, None, None)
    if (
        e.hour_brightness is not None
        and m.brightness < s.dark_below
        and m.brightness < s.dark_ratio_below * e.hour_brightness
    ):
        now.add(DARK)  # dark at an hour that is usually light
    if m.brightness > s.bright_above:
        now.add(BRIGHT)
    covered = m.structure < s.covered_std_below or (
        e.structure is not None and m.structure < s.covered_ratio_below * e.structure
    )
    blurred = m.edges < s.blur_below or (
        e.edges is not None and m.edges < s.blur_ratio_below * e.edges
    )
    if covered:
        now.add(COVERED)
    elif blurred:
        now.add(BLUR)  # a uniform image has no edges either; covered says more
    if m.change is not None and m.change < s.frozen_diff_below:
        now.add(FROZEN)
    if COVERED not in now and m.shift is not None and m.correlation is not None:
        moved = m.shift > s.moved_shift_above or m.correlation < s.moved_corr_below
        if moved:
            now.add(MOVED)
    return now


class SceneHealth:
    """Holds conditions over time: reports after their time, clears after clear_after_s."""

    def __init__(self, settings: SceneSettings) -> None:
        self.s = settings
        self._seen_since: dict[str, float] = {}  # condition -> first frame it showed
        self._gone_since: dict[str, float] = {}  # active condition -> first frame without
        self.active: dict[str, float] = {}  # condition -> since when it is reported

    def _hold_time(self, condition: str) -> float:
        return self.s.frozen_after_s if condition == FROZEN else self.s.report_after_s

    def update(self, now_set: set[str], t: float) -> list[SceneChange]:
        changes: list[SceneChange] = []
        for cond in CONDITIONS:
            if cond in now_set:
                self._gone_since.pop(cond, None)
                start = self._seen_since.setdefault(cond, t)
                if cond not in self.active and t - start >= self._hold_time(cond):
                    self.active[cond] = start
                    changes.append(SceneChange(cond, True, start))
            else:
                self._seen_since.pop(cond, None)
                if cond in self.active:
                    gone = self._gone_since.setdefault(cond, t)
                    if t - gone >= self.s.clear_after_s:
                        del self.active[cond]
                        del self._gone_since[cond]
                        changes.append(SceneChange(cond, False, gone))
        return changes

    def problems(self) -> list[str]:
        return [c for c in CONDITIONS if c in self.active]
