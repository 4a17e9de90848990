"""Camera source through OpenCV's VideoCapture: V4L2 devices, RTSP/HTTP streams, video files.

Frames are decoded by OpenCV and carried as RGB arrays (``Frame.pixels``). A stream that
cannot be opened or stops delivering raises CameraError; the capture thread reopens it with
backoff and reports the camera state. A video file is replayed at the configured rate and,
with ``loop``, from the start again when it ends.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

import cv2

from agent.config import OpenCvCameraSettings
from agent.errors import CameraError
from agent.vision.camera import CameraSource, Frame, register_source

log = logging.getLogger(__name__)


def _target(url: str) -> int | str:
    return int(url) if url.isdigit() else url


def is_stream(url: str) -> bool:
    return "://" in url


def is_file(url: str) -> bool:
    return not is_stream(url) and not url.isdigit() and not url.startswith("/dev/video")


class OpenCvSource(CameraSource):
    def __init__(self, settings: OpenCvCameraSettings) -> None:
        self.s = settings
        self._cap: Any = None
        self._closed = threading.Event()
        self._index = 0
        self._period = 1.0 / settings.fps
        self._next_due: float | None = None
        self._file = is_file(settings.url)

    def open(self) -> None:
        self._closed.clear()
        self._index = 0
        self._next_due = None
        if self._file and not Path(self.s.url).is_file():
            raise CameraError(f"video file {self.s.url} does not exist")
        ms = int(self.s.timeout_s * 1000)
        params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, ms]
        cap = cv2.VideoCapture(_target(self.s.url), cv2.CAP_ANY, params)
        if not cap.isOpened():
            cap.release()
            raise CameraError(f"cannot open camera {self.s.url}")
        if self.s.width:
            cap.set(cv2.CAP_PROP_FRAME_WIDTH, self.s.width)
        if self.s.height:
            cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self.s.height)
        self._cap = cap
        log.info("camera %s opened", self.s.url)

    def close(self) -> None:
        self._closed.set()  # the reading thread releases the capture (not thread-safe)

    def _release(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None

    def read(self) -> Frame | None:
        if self._closed.is_set() or self._cap is None:
            self._release()
            return None
        if self._file:  # a file delivers as fast as it is read: pace it like a camera
            now = time.monotonic()
            due = now if self._next_due is None else self._next_due
            if due > now and self._closed.wait(due - now):
                self._release()
                return None
            self._next_due = max(due + self._period, time.monotonic() - self._period)
        ok, bgr = self._cap.read()
        if not ok and self._file and self.s.loop and self._index > 0:
            self._cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
            ok, bgr = self._cap.read()
        if not ok or bgr is None:
            self._release()
            raise CameraError(f"camera {self.s.url} stopped delivering frames")
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        frame = Frame(self._index, time.monotonic(), time.time(), b"", self.s.url, rgb)
        self._index += 1
        return frame


@register_source("opencv")
def _opencv(config: object) -> CameraSource:
    if not isinstance(config, OpenCvCameraSettings):
        raise CameraError("opencv source needs an opencv camera config")
    return OpenCvSource(config)
