"""Camera sources that need no hardware, paced to their fps as a real camera's ``read``
blocks: ``FileReplaySource`` replays the image files of a folder (``camera.type = "files"``),
``SyntheticSource`` makes PPM frames in memory (``"synthetic"``). They register themselves
with the camera seam (``agent.vision.camera``) like the OpenCV and picamera2 sources.
"""

from __future__ import annotations

import logging
import threading
import time
from abc import abstractmethod
from collections.abc import Callable
from pathlib import Path

from agent.config import FilesCameraSettings, SyntheticCameraSettings
from agent.errors import CameraError
from agent.vision.camera import CameraConfig, CameraSource, Frame, register_source

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".ppm", ".pgm", ".pnm", ".jpg", ".jpeg", ".png", ".bmp"})


class PacedSource(CameraSource):
    """A source that paces itself to ``fps`` (a real camera's read blocks the same way)."""

    def __init__(
        self,
        fps: float,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        if fps <= 0:
            raise ValueError("fps must be positive")
        self._period = 1.0 / fps
        self._clock = clock
        self._wall = wall
        self._closed = threading.Event()
        self._next_due: float | None = None
        self._index = 0

    def open(self) -> None:
        self._closed.clear()
        self._next_due = None
        self._index = 0
        self._open()

    def close(self) -> None:
        self._closed.set()

    def read(self) -> Frame | None:
        now = self._clock()
        due = now if self._next_due is None else self._next_due
        if due > now and self._closed.wait(due - now):
            return None
        if self._closed.is_set():
            return None
        # after a long stall, do not burst to catch up
        self._next_due = max(due + self._period, self._clock() - self._period)
        data, origin = self._produce(self._index)
        frame = Frame(self._index, self._clock(), self._wall(), data, origin)
        self._index += 1
        return frame

    def _open(self) -> None:
        """Prepare the source; raise CameraError when it cannot deliver."""

    @abstractmethod
    def _produce(self, index: int) -> tuple[bytes, str]: ...


class FileReplaySource(PacedSource):
    """Cycles through the image files of a folder in name order."""

    def __init__(self, folder: Path, fps: float, **kw: Callable[[], float]) -> None:
        super().__init__(fps, **kw)
        self.folder = Path(folder)
        self._files: list[Path] = []

    def _open(self) -> None:
        if self.folder.is_file():  # one image file: the same frame again and again
            self._files = [self.folder]
            return
        try:
            files = sorted(
                p
                for p in self.folder.iterdir()
                if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
            )
        except OSError as exc:
            raise CameraError(f"cannot list {self.folder}: {exc.strerror or exc}") from exc
        if not files:
            raise CameraError(f"no image files in {self.folder}")
        self._files = files
        log.info("replaying %d image files from %s", len(files), self.folder)

    def _produce(self, index: int) -> tuple[bytes, str]:
        if not self._files:
            raise CameraError("source not open")
        path = self._files[index % len(self._files)]
        try:
            return path.read_bytes(), path.name
        except OSError as exc:
            raise CameraError(f"cannot read {path}: {exc.strerror or exc}") from exc


class SyntheticSource(PacedSource):
    """Small PPM frames made in memory: a gradient with a square that moves every frame."""

    def __init__(self, width: int, height: int, fps: float, **kw: Callable[[], float]) -> None:
        super().__init__(fps, **kw)
        self.width = width
        self.height = height

    def _produce(self, index: int) -> tuple[bytes, str]:
        return synthetic_ppm(self.width, self.height, index), "synthetic"


def synthetic_ppm(width: int, height: int, index: int) -> bytes:
    """A binary PPM (P6): horizontal colour gradient shifted by ``index``, vertical green
    ramp, and a white square whose position depends on ``index``, so frames differ."""
    if width < 8 or height < 8:
        raise ValueError("frame must be at least 8x8")
    shift = (index * 4) & 0xFF
    reds = bytes(((x * 255) // (width - 1) + shift) & 0xFF for x in range(width))
    blues = bytes(255 - r for r in reds)
    size = max(4, min(width, height) // 4)
    sx = (index * 3) % (width - size)
    sy = (index * 2) % (height - size)
    square = b"\xff" * (size * 3)
    out = bytearray(b"P6\n%d %d\n255\n" % (width, height))
    for y in range(height):
        row = bytearray(width * 3)
        row[0::3] = reds
        row[1::3] = bytes([(y * 255) // (height - 1)]) * width
        row[2::3] = blues
        if sy <= y < sy + size:
            row[sx * 3 : (sx + size) * 3] = square
        out += row
    return bytes(out)


@register_source("files")
def _files(config: CameraConfig) -> CameraSource:
    if not isinstance(config, FilesCameraSettings):
        raise CameraError("files source needs a files camera config")
    return FileReplaySource(config.path, config.fps)


@register_source("synthetic")
def _synthetic(config: CameraConfig) -> CameraSource:
    if not isinstance(config, SyntheticCameraSettings):
        raise CameraError("synthetic source needs a synthetic camera config")
    return SyntheticSource(config.width, config.height, config.fps)
