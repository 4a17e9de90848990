"""The Raspberry Pi camera through picamera2: an optional import, on Raspberry Pi OS only
(libcamera's Python bindings come from apt; the agent's venv is made with
``--system-site-packages`` to see them). Elsewhere opening it raises CameraError."""

from __future__ import annotations

import importlib
import logging
import threading
import time
from typing import Any

import cv2

from agent.config import PiCameraSettings
from agent.errors import CameraError
from agent.vision.camera import CameraSource, Frame, register_source

log = logging.getLogger(__name__)


class PiCameraSource(CameraSource):
    def __init__(self, settings: PiCameraSettings) -> None:
        self.s = settings
        self._cam: Any = None
        self._closed = threading.Event()
        self._index = 0

    def open(self) -> None:
        self._closed.clear()
        self._index = 0
        try:
            module = importlib.import_module("picamera2")
        except ImportError as exc:
            raise CameraError(
                "picamera2 is not available (Raspberry Pi OS: apt install python3-picamera2, "
                f"venv with --system-site-packages): {exc}"
            ) from exc
        try:
            cam = module.Picamera2()
            config = cam.create_video_configuration(
                main={"size": (self.s.width, self.s.height), "format": "RGB888"},
                controls={"FrameRate": self.s.fps},
            )
            cam.configure(config)
            cam.start()
        except Exception as exc:  # libcamera raises many kinds; all mean "no camera"
            raise CameraError(f"picamera2 cannot start the camera: {exc}") from exc
        self._cam = cam

    def close(self) -> None:
        self._closed.set()

    def read(self) -> Frame | None:
        if self._closed.is_set() or self._cam is None:
            self._stop()
            return None
        try:
            bgr = self._cam.capture_array("main")  # "RGB888" is B, G, R in memory
        except Exception as exc:  # see open()
            self._stop()
            raise CameraError(f"picamera2 stopped delivering frames: {exc}") from exc
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        frame = Frame(self._index, time.monotonic(), time.time(), b"", "picamera2", rgb)
        self._index += 1
        return frame

    def _stop(self) -> None:
        if self._cam is not None:
            try:
                self._cam.stop()
                self._cam.close()
            except Exception:  # closing a failed camera may fail again; nothing to keep
                log.debug("picamera2 close failed", exc_info=True)
            self._cam = None


@register_source("picamera2")
def _picamera2(config: object) -> CameraSource:
    if not isinstance(config, PiCameraSettings):
        raise CameraError("picamera2 source needs a picamera2 camera config")
    return PiCameraSource(config)
