"""Camera scenes made from real photos that scikit-image ships, for tests, rigs and benches.

A scene is a still background (the ``rocket`` photo: no person, no cat) with objects cut
from real photos (the astronaut: a person; chelsea: a cat) moving across it, plus optional
sensor noise. Frames are RGB arrays; ``write_frames`` stores them as PNG files for a
replayed camera.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt
from skimage import data as skdata

from common.files import atomic_write

Image = npt.NDArray[np.uint8]


def _photo(name: str) -> npt.NDArray[np.uint8]:
    """A photo from scikit-image's data (shipped in its wheel; untyped library)."""
    load: Callable[[], npt.NDArray[np.uint8]] = getattr(skdata, name)
    return load()


def _rgb(img: npt.NDArray[np.uint8]) -> Image:
    if img.ndim == 2:
        img = np.stack([img] * 3, axis=-1)
    return np.ascontiguousarray(img[..., :3])


def person() -> Image:
    """The astronaut photo (a person, upper body), as it is."""
    return _rgb(_photo("astronaut"))


def cameraman() -> Image:
    return _rgb(_photo("camera"))


def cat() -> Image:
    return _rgb(_photo("chelsea"))


def background(width: int = 640, height: int = 480) -> Image:
    return np.asarray(cv2.resize(_rgb(_photo("rocket")), (width, height)), np.uint8)


@dataclass(frozen=True)
class Mover:
    """An object crossing the frame: ``sprite`` from x0 to x1 (fractions) between frames
    ``start`` and ``start + frames``, its top at ``y`` (fraction), ``height`` pixels tall."""

    sprite: Image
    start: int
    frames: int
    x0: float
    x1: float
    y: float
    height: int

    def box_at(self, index: int, width: int, height: int) -> tuple[int, int, int, int] | None:
        if not self.start <= index < self.start + self.frames:
            return None
        f = (index - self.start) / max(1, self.frames - 1)
        h = self.height
        w = round(self.sprite.shape[1] * h / self.sprite.shape[0])
        cx = (self.x0 + (self.x1 - self.x0) * f) * width
        x = int(min(max(cx - w / 2, 0), width - w))
        y = int(min(max(self.y * height, 0), height - h))
        return x, y, x + w, y + h


class Scene:
    def __init__(
        self,
        movers: list[Mover],
        width: int = 640,
        height: int = 480,
        noise: float = 2.0,
        seed: int = 7,
    ) -> None:
        self.movers = movers
        self.width = width
        self.height = height
        self.noise = noise
        self.bg = background(width, height)
        rng = np.random.default_rng(seed)
        # a bank of noise fields used in turn: frames stay cheap to make (benches make 10k)
        self._noise = [
            np.clip(rng.normal(0, noise, (height, width, 3)), -127, 127).astype(np.int16)
            for _ in range(8 if noise > 0 else 0)
        ]
        self._sprites = {
            id(m): cv2.resize(
                m.sprite,
                (round(m.sprite.shape[1] * m.height / m.sprite.shape[0]), m.height),
                interpolation=cv2.INTER_AREA,
            )
            for m in movers
        }

    def frame(self, index: int) -> Image:
        img = self.bg.copy()
        for m in self.movers:
            box = m.box_at(index, self.width, self.height)
            if box is None:
                continue
            x0, y0, x1, y1 = box
            img[y0:y1, x0:x1] = self._sprites[id(m)][: y1 - y0, : x1 - x0]
        if self._noise:
            noisy = img.astype(np.int16) + self._noise[index % len(self._noise)]
            img = np.clip(noisy, 0, 255).astype(np.uint8)
        return img

    def moving_at(self, index: int) -> list[int]:
        """Indices of the movers visible in frame ``index``."""
        return [i for i, m in enumerate(self.movers) if m.box_at(index, self.width, self.height)]


def crossing_scene(
    count: int = 1, frames_each: int = 30, gap: int = 10, noise: float = 2.0
) -> Scene:
    """People walking across, one after the other, left to right then right to left."""
    movers = []
    sprite = person()
    for i in range(count):
        left = i % 2 == 0
        movers.append(
            Mover(
                sprite,
                i * (frames_each + gap),
                frames_each,
                0.15 if left else 0.85,
                0.85 if left else 0.15,
                0.2,
                300,
            )
        )
    return Scene(movers, noise=noise)


def png_bytes(rgb: Image) -> bytes:
    """An RGB frame as the bytes of a PNG file."""
    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return bytes(buf)


def write_frames(scene: Scene, folder: Path, count: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(count):
        path = folder / f"frame-{i:05d}.png"
        atomic_write(str(path), png_bytes(scene.frame(i)), 0o644)
        out.append(path)
    return out
