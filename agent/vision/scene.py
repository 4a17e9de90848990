"""Scene and camera health: measures of a grey frame, and conditions held over time.

Measures (``measure``): mean grey level, spread (standard deviation), sharpness (variance
of the Laplacian), change since the previous frame, and, against the commissioning
reference frame, the shift (phase correlation) and the correlation of the two images.

Conditions: ``dark``, ``bright``, ``blur``, ``covered`` (almost uniform image), ``frozen``
(no change at all: a real sensor always has noise), ``moved`` (shifted or no longer like
the reference), and ``no_frames`` (from the capture). ``SceneHealth`` reports a condition
once it has held for its time and clears it once it has been gone for ``clear_after_s``:
each report and each clearing is a change the pipeline turns into an event.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt

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


def measure(grey: Grey, previous: Grey | None, reference: Reference | None) -> SceneMeasures:
    change = None
    if previous is not None and previous.shape == grey.shape:
        change = float(cv2.absdiff(grey, previous).mean())
    shift = corr = None
    if reference is not None:
        shift, corr = reference.compare(grey)
    return SceneMeasures(
        brightness=float(grey.mean()),
        spread=float(grey.std()),
        # a 3x3 Gaussian first: sensor noise alone must not pass for sharp edges
        sharpness=float(cv2.Laplacian(cv2.GaussianBlur(grey, (3, 3), 0), cv2.CV_32F).var()),
        change=change,
        shift=shift,
        correlation=corr,
    )


def conditions_now(m: SceneMeasures, s: SceneSettings) -> set[str]:
    """The conditions this one frame shows (before any holding time)."""
    now: set[str] = set()
    if m.brightness < s.dark_below:
        now.add(DARK)
    if m.brightness > s.bright_above:
        now.add(BRIGHT)
    if m.spread < s.covered_std_below:
        now.add(COVERED)
    elif m.sharpness < s.blur_below:
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
