"""The scene's own lighting history: what covered, blurred and dark mean for *this* view
in *this* light.

A dark street at night is not a covered lens: it is darker, its contrast is lower and its
noise higher, but its structure (the spread of a small, noise-averaged copy of the frame)
falls slowly with the light, and its edges keep their share of the contrast
(``edges`` = Laplacian variance / spread², unchanged when the image is scaled). A hand over
the lens takes the structure away within a second; defocus takes the edges away while the
contrast stays. So the health thresholds are ratios against baselines learned from the
scene itself:

- a baseline of ``structure`` and ``edges`` per lighting mode (``colour``: day and dim
  colour; ``ir``: the infrared cut filter is out and the image is grey), following the
  light with a time constant of ``light_adapt_s``, learned only from frames that look
  healthy and did not just drop (a cover is never learned as the new normal);
- the usual brightness for each hour of the day (wall clock), so that dark at noon is a
  problem and dark at midnight is night.

The mode is also what the heartbeat reports as ``light`` (``day``, ``low_light``, ``ir``)
and what marks counts made in conditions where the detector is unreliable.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from agent.vision.settings import SceneSettings

DAY = "day"
LOW_LIGHT = "low_light"
IR = "ir"


@dataclass
class Baseline:
    structure: float
    edges: float
    frames: int = 0


@dataclass(frozen=True)
class Expectation:
    """What this view usually shows in the current light (None: not learned yet)."""

    structure: float | None
    edges: float | None
    hour_brightness: float | None  # usual mean grey at this hour of the day


def mode_of(brightness: float, colour: float | None, s: SceneSettings) -> str:
    if colour is not None and colour / (brightness + 1.0) < s.ir_colour_below:
        return IR
    if brightness < s.dark_below:
        return LOW_LIGHT
    return DAY


class LightModel:
    def __init__(self, s: SceneSettings) -> None:
        self.s = s
        self.mode = DAY
        self._base: dict[str, Baseline] = {}
        self._hours: list[tuple[float, int]] = [(0.0, 0)] * 24  # (mean brightness, samples)
        self._last_t: float | None = None
        self._drop_since: float | None = None

    @staticmethod
    def key(mode: str) -> str:
        return "ir" if mode == IR else "colour"

    def observe_mode(self, brightness: float, colour: float | None) -> tuple[str, bool]:
        """The mode of this frame, and whether it switched between colour and infrared."""
        mode = mode_of(brightness, colour, self.s)
        before = self.key(self.mode)
        switched = self.key(mode) != before
        if switched and self.key(mode) not in self._base and before in self._base:
            # a first switch: start from what the view showed before it. A real switch to
            # infrared keeps the view's structure and is learned in a few seconds; a grey
            # hand over the lens by day looks like a switch and must still be covered
            old = self._base[before]
            self._base[self.key(mode)] = Baseline(old.structure, old.edges, old.frames)
        self.mode = mode
        return mode, switched

    def hour(self, wall: float) -> int:
        return time.localtime(wall).tm_hour

    def expect(self, wall: float) -> Expectation:
        b = self._base.get(self.key(self.mode))
        hb, n = self._hours[self.hour(wall)]
        usual = hb if n >= self.s.hour_samples else None
        if b is None or b.frames < 2:
            return Expectation(None, None, usual)
        return Expectation(b.structure, b.edges, usual)

    def learn(self, structure: float, edges: float, brightness: float, t: float, wall: float,
              healthy: bool) -> None:  # fmt: skip
        """Follow the light with a healthy frame; a frame whose structure just dropped
        below ``learn_ratio_above`` of the baseline is not learned (covers are fast)."""
        dt = 0.25 if self._last_t is None else max(0.0, min(60.0, t - self._last_t))
        self._last_t = t
        if not healthy:
            return
        h = self.hour(wall)
        mean, n = self._hours[h]
        self._hours[h] = (mean + (brightness - mean) / min(n + 1, 1000), n + 1)
        key = self.key(self.mode)
        b = self._base.get(key)
        if b is None:
            self._base[key] = Baseline(structure, edges, 1)
            return
        if structure < self.s.learn_ratio_above * b.structure:
            # a fast drop: wait and see (a cover), do not learn it; but a lasting change
            # of the view that is not a cover (snow, a new hoarding) is taken in the end
            self._drop_since = t if self._drop_since is None else self._drop_since
            if t - self._drop_since < self.s.relearn_after_s:
                return
            b.structure, b.edges = structure, edges
        self._drop_since = None
        a = 1.0 - math.exp(-dt / self.s.light_adapt_s) if b.frames > 1 else 0.5
        b.structure += a * (structure - b.structure)
        b.edges += a * (edges - b.edges)
        b.frames += 1

    def baselines(self) -> dict[str, Baseline]:
        return dict(self._base)
