"""The camera seam: sources behind one interface, a registry, and the capture thread.

A source is opened, read frame by frame (``read`` blocks until the next frame and returns
None once the source is closed), and closed. Sources register themselves under the
``camera.type`` that chooses them in the config: ``files`` and ``synthetic`` (no hardware,
``agent.vision.camera_sim``), ``opencv`` (V4L2/RTSP/video files, ``camera_cv``) and
``picamera2`` (``camera_picam``).

``Capture`` runs one source in its own thread, puts frames into a bounded ``FrameQueue``
(the oldest frame is dropped when full), reopens a failed source with backoff, and reports
frames, measured fps and state for the heartbeat.
"""

from __future__ import annotations

import logging
import threading
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from agent.config import (
    FilesCameraSettings,
    OpenCvCameraSettings,
    PiCameraSettings,
    SyntheticCameraSettings,
)
from agent.errors import CameraError
from agent.link.backoff import Backoff
from agent.vision.frames import BadFrameLog

log = logging.getLogger(__name__)

CameraConfig = (
    FilesCameraSettings | SyntheticCameraSettings | OpenCvCameraSettings | PiCameraSettings
)

# Camera states reported in the heartbeat.
CAM_OK = "ok"
CAM_NO_FRAMES = "no_frames"
CAM_ERROR = "error"
CAM_BAD_FRAMES = "bad_frames"  # frames arrive but cannot be decoded or used


@dataclass(frozen=True)
class Frame:
    index: int  # frames delivered by this source since it was opened, from 0
    t_mono: float  # time.monotonic() when captured, seconds
    t_wall: float  # time.time() when captured, seconds since the epoch
    data: bytes  # encoded image as the source delivered it (no decoding here)
    origin: str  # file name, or "synthetic"
    pixels: Any = None  # decoded RGB array (numpy, H x W x 3) when the source decodes


class CameraSource(ABC):
    """One camera. ``read`` may block; ``close`` may be called from another thread and makes
    a blocked ``read`` return None."""

    @abstractmethod
    def open(self) -> None: ...

    @abstractmethod
    def read(self) -> Frame | None: ...

    @abstractmethod
    def close(self) -> None: ...


# ---------------------------------------------------------------- registry

SourceFactory = Callable[[CameraConfig], CameraSource]
_REGISTRY: dict[str, SourceFactory] = {}


def register_source(kind: str) -> Callable[[SourceFactory], SourceFactory]:
    """Decorator: make ``factory`` the source for config ``camera.type == kind``."""

    def deco(factory: SourceFactory) -> SourceFactory:
        if kind in _REGISTRY:
            raise ValueError(f"camera source {kind!r} registered twice")
        _REGISTRY[kind] = factory
        return factory

    return deco


def source_kinds() -> list[str]:
    return sorted(_REGISTRY)


def _load_plugins() -> None:
    """Sources in their own modules register themselves when imported."""
    import agent.vision.camera_cv
    import agent.vision.camera_picam
    import agent.vision.camera_sim  # noqa: F401


def make_source(config: CameraConfig) -> CameraSource:
    _load_plugins()
    factory = _REGISTRY.get(config.type)
    if factory is None:
        raise CameraError(f"no camera source registered for type {config.type!r}")
    return factory(config)


# ---------------------------------------------------------------- queue and capture


class FrameQueue:
    """Bounded, thread-safe; when full, ``put`` drops the oldest frame."""

    def __init__(self, maxsize: int) -> None:
        if maxsize < 1:
            raise ValueError("maxsize must be at least 1")
        self.maxsize = maxsize
        self._items: deque[Frame] = deque(maxlen=maxsize)
        self._cond = threading.Condition()
        self.dropped = 0

    def put(self, frame: Frame) -> bool:
        """Add a frame; True when the oldest one was dropped to make room."""
        with self._cond:
            full = len(self._items) == self.maxsize
            if full:
                self.dropped += 1
            self._items.append(frame)
            self._cond.notify()
            return full

    def get(self, timeout: float | None = None) -> Frame | None:
        """The oldest frame, or None when none arrives within ``timeout`` seconds."""
        with self._cond:
            if not self._cond.wait_for(lambda: len(self._items) > 0, timeout):
                return None
            return self._items.popleft()

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)


@dataclass(frozen=True)
class CameraStats:
    state: str  # CAM_OK, CAM_NO_FRAMES, CAM_ERROR or CAM_BAD_FRAMES
    frames: int  # frames captured since the agent started
    fps: float  # measured over the last window
    dropped: int  # frames dropped because the queue was full
    error: str | None  # last source error, while the state is CAM_ERROR or CAM_BAD_FRAMES
    bad_frames: int = 0  # frames that could not be decoded or used, since the start


def camera_state(
    failed: bool, last_frame: float | None, now: float, stall_s: float, bad_streak: int = 0
) -> str:
    """State from facts: a failed source is an error; no frame for ``stall_s`` is no_frames;
    frames arriving that cannot be used (the last one was bad) is bad_frames."""
    if failed:
        return CAM_ERROR
    if last_frame is None or now - last_frame > stall_s:
        return CAM_NO_FRAMES
    if bad_streak > 0:
        return CAM_BAD_FRAMES
    return CAM_OK


def measured_fps(times: deque[float], now: float, window_s: float, started: float) -> float:
    """Frames per second over the last ``window_s`` (or since ``started`` if shorter)."""
    recent = sum(1 for t in times if now - window_s < t <= now)
    span = min(window_s, now - started)
    return recent / span if span > 0 else 0.0


class Capture:
    """Runs a source in a thread; reopens it with backoff when it fails."""

    def __init__(
        self,
        factory: Callable[[], CameraSource],
        queue: FrameQueue,
        backoff: Backoff,
        *,
        fps: float,
        window_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._factory = factory
        self.queue = queue
        self._backoff = backoff
        self._window_s = window_s
        self._stall_s = max(2.0, 3.0 / fps)
        self._clock = clock
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._source: CameraSource | None = None
        self._thread: threading.Thread | None = None
        self._times: deque[float] = deque(maxlen=max(16, int(fps * window_s * 2) + 1))
        self._frames = 0
        self._latest: Frame | None = None
        self._last_frame: float | None = None
        self._error: str | None = None
        self._started = clock()
        self.bad = BadFrameLog()

    def start(self) -> None:
        if self._thread is not None:
            raise CameraError("capture already started")
        self._started = self._clock()
        self._thread = threading.Thread(target=self._run, name="camera-capture", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        with self._lock:
            source = self._source
        if source is not None:
            source.close()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("camera thread did not stop within %.1fs", timeout)

    def latest(self) -> Frame | None:
        """The newest frame captured (for a snapshot on request), or None."""
        with self._lock:
            return self._latest

    def stats(self) -> CameraStats:
        now = self._clock()
        with self._lock:
            failed = self._error is not None
            streak = self.bad.streak
            error = self._error
            if error is None and streak:
                error = self.bad.last_reason
            return CameraStats(
                state=camera_state(failed, self._last_frame, now, self._stall_s, streak),
                frames=self._frames,
                fps=measured_fps(self._times, now, self._window_s, self._started),
                dropped=self.queue.dropped,
                error=error,
                bad_frames=self.bad.total,
            )

    def frame_used(self) -> None:
        """The consumer could use the last frame (ends a bad_frames state)."""
        with self._lock:
            self.bad.good()

    def frame_unusable(self, reason: str) -> None:
        """The consumer could not decode or use a frame: counted, warned about at most once
        a minute, and the camera state is bad_frames until a frame is usable again."""
        with self._lock:
            warning = self.bad.bad(reason, self._clock())
        if warning is not None:
            log.warning("camera: %s", warning)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._run_source_once()
            if self._stop.is_set():
                break
            delay = self._backoff.next_delay()
            log.info("reopening camera source in %.1fs", delay)
            self._stop.wait(delay)

    def _run_source_once(self) -> None:
        source: CameraSource | None = None
        try:
            source = self._factory()
            with self._lock:
                self._source = source
            if self._stop.is_set():
                return
            source.open()
            while not self._stop.is_set():
                frame = source.read()
                if frame is None:
                    return
                self._record(frame)
        except CameraError as exc:
            self._fail(str(exc))
        except Exception as exc:  # a faulty source plugin must not end capture
            log.exception("camera source raised an unexpected error")
            self._fail(f"{type(exc).__name__}: {exc}")
        finally:
            if source is not None:
                source.close()
            with self._lock:
                self._source = None

    def _record(self, frame: Frame) -> None:
        self.queue.put(frame)
        with self._lock:
            self._latest = frame
            if self._error is not None:
                log.info("camera delivers frames again")
            self._error = None
            self._frames += 1
            self._last_frame = frame.t_mono
            self._times.append(frame.t_mono)
        self._backoff.reset()

    def _fail(self, message: str) -> None:
        with self._lock:
            first = self._error is None
            self._error = message
        if first:
            log.warning("camera source failed: %s", message)
        else:
            log.debug("camera source still failing: %s", message)
