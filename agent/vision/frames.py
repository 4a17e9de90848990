"""Where a frame enters the detection side: decoding and normalisation, in one place.

Every frame the pipeline sees has passed ``decode_image`` (encoded bytes) or ``normalise``
(arrays a camera delivers): afterwards it is a C-contiguous ``H x W x 3`` ``uint8`` RGB
array at least ``MIN_SIDE`` pixels on each side. What is converted, explicitly:

- ``H x W`` and ``H x W x 1`` ``uint8`` grey (a mono sensor, an infrared camera) -> RGB;
- ``H x W x 4`` ``uint8`` RGBA (some V4L2 and picamera2 formats) -> RGB, alpha dropped.

Everything else raises ``BadFrame`` (a ``ValueError``) with the reason: other dtypes
(``uint16`` raw sensor data, floats, bools), other channel counts, frames smaller than
``MIN_SIDE``, empty or undecodable bytes. Nothing here keeps state: the caller counts.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

Image = npt.NDArray[np.uint8]

MIN_SIDE = 8  # smaller frames are refused (the scene analysis needs 8 x 8)
MAX_PIXELS = 64_000_000  # larger frames are refused before any work is done on them


class BadFrame(ValueError):
    """A frame that cannot be used: undecodable bytes, wrong dtype, shape or channels."""


def describe(img: Any) -> str:
    """``uint16 (480, 640)``, for messages."""
    dtype = getattr(img, "dtype", type(img).__name__)
    shape = getattr(img, "shape", "?")
    return f"{dtype} {tuple(shape) if shape != '?' else shape}"


def normalise(img: Any) -> Image:
    """``img`` as a contiguous RGB ``uint8`` frame (no copy when it is one already)."""
    if not isinstance(img, np.ndarray):
        raise BadFrame(f"a frame must be a numpy array, not {type(img).__name__}")
    if img.dtype != np.uint8:
        raise BadFrame(f"frame is {describe(img)}: only uint8 grey, RGB or RGBA is accepted")
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    if img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[2] not in (3, 4)):
        raise BadFrame(f"frame is {describe(img)}: expected H x W grey, H x W x 3 or x 4")
    h, w = img.shape[:2]
    if h < MIN_SIDE or w < MIN_SIDE:
        raise BadFrame(f"frame is {describe(img)}: smaller than {MIN_SIDE} x {MIN_SIDE}")
    if h * w > MAX_PIXELS:
        raise BadFrame(f"frame is {describe(img)}: larger than {MAX_PIXELS} pixels")
    if img.ndim == 2:
        return np.asarray(cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_GRAY2RGB), np.uint8)
    if img.shape[2] == 4:
        return np.asarray(cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_RGBA2RGB), np.uint8)
    out: Image = img if img.flags.c_contiguous else np.ascontiguousarray(img)
    return out


def decode_image(data: bytes) -> Image:
    """Encoded image bytes (JPEG, PNG, PPM, BMP) to RGB; ``BadFrame`` when they are empty,
    truncated or not an image (never OpenCV's own error)."""
    if not data:
        raise BadFrame("empty frame (0 bytes)")
    level = cv2.utils.logging.getLogLevel()
    # OpenCV's decoders print their own complaint per bad frame: the caller counts instead
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    try:
        arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error as exc:  # some decoders raise instead of returning None
        raise BadFrame(f"not a decodable image ({len(data)} bytes): {exc.msg}") from exc
    finally:
        cv2.utils.logging.setLogLevel(level)
    if arr is None or arr.size == 0:
        raise BadFrame(f"not a decodable image ({len(data)} bytes)")
    if arr.dtype == np.uint16:  # a 16-bit PNG or PGM: scaled down, explicitly
        arr = np.right_shift(np.asarray(arr, np.uint16), 8).astype(np.uint8)
    if arr.ndim == 3 and arr.shape[2] == 3:
        arr = cv2.cvtColor(arr, cv2.COLOR_BGR2RGB)
    elif arr.ndim == 3 and arr.shape[2] == 4:
        arr = cv2.cvtColor(arr, cv2.COLOR_BGRA2RGB)
    return normalise(arr)


class BadFrameLog:
    """Counts unusable frames and says when to warn: the first one at once, then at most
    one warning per ``every_s`` seconds carrying the count since the previous warning.
    ``streak`` is the run of bad frames since the last good one (camera health)."""

    def __init__(self, every_s: float = 60.0) -> None:
        self.every_s = every_s
        self.total = 0
        self.streak = 0
        self.last_reason = ""
        self._since_warning = 0
        self._warned_at: float | None = None

    def good(self) -> None:
        self.streak = 0

    def bad(self, reason: str, now: float) -> str | None:
        """Count one bad frame; the warning text when one is due, else None."""
        self.total += 1
        self.streak += 1
        self._since_warning += 1
        self.last_reason = reason
        if self._warned_at is not None and now - self._warned_at < self.every_s:
            return None
        n, self._since_warning, self._warned_at = self._since_warning, 0, now
        return f"{n} unusable frame(s) ({self.total} in all); last: {reason}"
