"""Street conditions generated over real photos, for tests and benches: a swaying pole,
the light of a day (dawn, noon, dusk, infrared night), rain and sensor noise, headlight
sweeps, and a hand covering the lens.

A ``Street`` is a canvas a little larger than the frame (the ``rocket`` photo of
``hil_tests.scenes``), with parked objects pasted on it and objects crossing it
(``scenes.Mover``, canvas coordinates). ``frame(i)`` cuts the camera's view out of it,
shifted by ``shift(i)`` (sub-pixel), then applies the light of ``light(i)``, rain,
headlights, a cover and sensor noise, all from seeded generators: the same index gives the
same frame.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import cv2
import numpy as np
import numpy.typing as npt

from hil_tests import scenes

Image = npt.NDArray[np.uint8]
MARGIN = 12  # canvas pixels on each side beyond the view (room for the sway)


@dataclass(frozen=True)
class Light:
    """The light of one moment: ``gain`` and ``offset`` on the daylight image, ``noise``
    (grey levels, sensor noise grows as the gain is pushed up), ``ir`` (the infrared cut
    filter is out: a grey image lit by the camera's own illuminator, falling off to the
    edges), ``contrast`` (1: as is; rain and fog lower it)."""

    gain: float = 1.0
    offset: float = 0.0
    noise: float = 2.0
    ir: bool = False
    contrast: float = 1.0


@dataclass(frozen=True)
class Parked:
    sprite: Image
    x: float  # left edge, fraction of the view
    y: float  # top edge, fraction of the view
    height: int  # pixels


@dataclass
class Street:
    width: int = 640
    height: int = 480
    parked: list[Parked] = field(default_factory=list)
    movers: list[scenes.Mover] = field(default_factory=list)
    shift: Callable[[int], tuple[float, float]] = lambda _i: (0.0, 0.0)
    light: Callable[[int], Light] = lambda _i: Light()
    rain: Callable[[int], int] = lambda _i: 0  # streaks in frame i
    headlight: Callable[[int], float | None] = lambda _i: None  # beam centre x (fraction)
    cover: Callable[[int], float] = lambda _i: 0.0  # radius of the hand, fraction of diagonal
    seed: int = 7

    def __post_init__(self) -> None:
        w, h = self.width + 2 * MARGIN, self.height + 2 * MARGIN
        canvas = scenes.background(w, h).copy()
        for p in self.parked:
            sw = round(p.sprite.shape[1] * p.height / p.sprite.shape[0])
            sprite = cv2.resize(p.sprite, (sw, p.height), interpolation=cv2.INTER_AREA)
            x, y = MARGIN + int(p.x * self.width), MARGIN + int(p.y * self.height)
            canvas[y : y + p.height, x : x + sw] = sprite[: h - y, : w - x]
        self.canvas = canvas
        self._scene = scenes.Scene(self.movers, self.width, self.height, noise=0.0)
        yy, xx = np.mgrid[0 : self.height, 0 : self.width].astype(np.float32)
        r = np.hypot(xx - self.width / 2, yy - self.height / 2) / math.hypot(
            self.width / 2, self.height / 2
        )
        self._falloff = (1.0 - 0.55 * r**2).astype(np.float32)  # the illuminator's cone
        self._yy, self._xx = yy, xx
        self._banks: dict[float, list[tuple[Image, Image]]] = {}

    def view(self, index: int) -> Image:
        """The camera's view of the street by day, shifted, movers on it."""
        img = self.canvas.copy()
        for m in self.movers:
            box = m.box_at(index, self.width, self.height)
            if box is not None:
                x0, y0, x1, y1 = box
                sprite = self._scene._sprites[id(m)]
                img[MARGIN + y0 : MARGIN + y1, MARGIN + x0 : MARGIN + x1] = sprite[
                    : y1 - y0, : x1 - x0
                ]
        dx, dy = self.shift(index)
        move = np.array([[1.0, 0.0, -MARGIN - dx], [0.0, 1.0, -MARGIN - dy]], np.float32)
        return np.asarray(
            cv2.warpAffine(img, move, (self.width, self.height), flags=cv2.INTER_LINEAR),
            np.uint8,
        )

    def _noise(self, sigma: float, index: int) -> tuple[Image, Image]:
        """Sensor noise of ``sigma`` grey levels as (to add, to subtract), from a bank."""
        key = round(sigma * 2) / 2
        bank = self._banks.get(key)
        if bank is None:
            rng = np.random.default_rng((self.seed, int(key * 10)))
            bank = []
            for _ in range(6):
                n = rng.normal(0.0, key, (self.height, self.width, 3))
                bank.append((np.clip(n, 0, 255).astype(np.uint8),
                             np.clip(-n, 0, 255).astype(np.uint8)))  # fmt: skip
            self._banks[key] = bank
        return bank[(index * 7 + self.seed) % len(bank)]

    def frame(self, index: int) -> Image:
        rng = np.random.default_rng((self.seed, index))
        light = self.light(index)
        img = self.view(index)
        if light.ir:
            grey = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY).astype(np.float32) * self._falloff
            img = cv2.cvtColor(np.clip(grey, 0, 255).astype(np.uint8), cv2.COLOR_GRAY2RGB)
        c = light.contrast
        mean = float(cv2.mean(img)[0]) if c != 1.0 else 0.0
        alpha = c * light.gain
        beta = mean * (1.0 - c) * light.gain + light.offset
        img = np.asarray(cv2.convertScaleAbs(img, alpha=alpha, beta=beta), np.uint8)
        beam = self.headlight(index)
        if beam is not None:  # a car's lights sweeping the road: a bright moving cone
            cx, cy = beam * self.width, 0.8 * self.height
            d2 = ((self._xx - cx) / (0.18 * self.width)) ** 2 + ((self._yy - cy) / 60.0) ** 2
            glow = np.clip(180.0 * np.exp(-d2), 0, 255).astype(np.uint8)
            img = np.asarray(cv2.add(img, cv2.cvtColor(glow, cv2.COLOR_GRAY2RGB)), np.uint8)
        streaks = self.rain(index)
        if streaks:
            layer = np.zeros((self.height, self.width), np.uint8)
            xs = rng.integers(0, self.width, streaks)
            ys = rng.integers(0, self.height, streaks)
            lengths = rng.integers(8, 24, streaks)
            levels = rng.integers(25, 60, streaks)
            widths = rng.choice([1, 1, 1, 2, 2, 3], streaks)  # drops nearer the lens: wider
            for x, y, n, v, t in zip(xs, ys, lengths, levels, widths, strict=True):
                cv2.line(layer, (int(x), int(y)), (int(x) + int(n) // 4, int(y) + int(n)),
                         int(v), int(t))  # fmt: skip
            near = max(1, streaks // 50)  # a few big blurred drops close to the lens
            for x, y in zip(xs[:near], ys[:near], strict=True):
                cv2.line(layer, (int(x), int(y)), (int(x) + 12, int(y) + 60), 40, 6)
            layer = np.asarray(cv2.GaussianBlur(layer, (3, 3), 0), np.uint8)
            img = np.asarray(cv2.add(img, cv2.cvtColor(layer, cv2.COLOR_GRAY2RGB)), np.uint8)
        radius = self.cover(index)
        if radius > 0:  # a hand over the lens: dark, smooth, out of focus, growing
            diag = math.hypot(self.width, self.height)
            d = np.hypot(self._xx - 0.45 * self.width, self._yy - 0.55 * self.height)
            inside = np.clip((radius * diag - d) / 40.0 + 0.5, 0.0, 1.0)[:, :, None]
            leak = min(1.0, light.gain)  # by day a little light leaks in at the bottom
            hand = (3.0 + 12.0 * leak * (self._yy / self.height))[:, :, None]
            if light.ir:  # the camera's infrared lights the hand: bright, featureless
                hand = hand + 60.0
            img = np.clip(img * (1.0 - inside) + hand * inside, 0, 255).astype(np.uint8)
        if light.noise > 0:
            up, down = self._noise(light.noise, index)
            img = np.asarray(cv2.subtract(cv2.add(img, up), down), np.uint8)
        return np.asarray(img, np.uint8)


def sway(
    amplitude: float = 4.0, period: int = 9, jitter: float = 1.0, seed: int = 3
) -> Callable[[int], tuple[float, float]]:
    """A pole in the wind: a shift of up to ``amplitude`` pixels, swinging every ``period``
    frames with a random jitter, never beyond the amplitude."""

    def at(i: int) -> tuple[float, float]:
        rng = np.random.default_rng((seed, i))
        j = rng.uniform(-jitter, jitter, 2)
        dx = amplitude * math.sin(2 * math.pi * i / period) + j[0]
        dy = 0.5 * amplitude * math.cos(2 * math.pi * i / (period * 1.7)) + j[1]
        return (max(-amplitude, min(amplitude, dx)), max(-amplitude, min(amplitude, dy)))

    return at


def day_light(phase: float) -> Light:
    """The light at ``phase`` of a day (0 midnight, 0.5 noon): the night is infrared (the
    cut filter out) from 0.85 to 0.2, dusk and dawn are dim colour with more noise."""
    if phase >= 0.85 or phase < 0.2:
        return Light(gain=0.45, offset=4.0, noise=3.0, ir=True)
    sun = math.sin(math.pi * (phase - 0.2) / 0.65)  # 0 at the switches, 1 at noon-ish
    gain = 0.15 + 0.85 * sun  # mean grey about 9 on this street just before the switch
    return Light(gain=gain, noise=2.0 + 2.5 * (1.0 - sun))
