"""Masks as pixels: the polygons of ``common.privacy`` (frame fractions) drawn into a frame's
resolution, cached per frame size.

``blackout`` fills the privacy masks with black in place, on the frame as it arrives from
the camera, before the motion gate, the detector, scene health, the reference frame or a
snapshot sees it. A motion mask's raster is the motion gate's ``mask`` (non-zero: ignored),
so motion inside it never opens the gate.
"""

from __future__ import annotations

import cv2
import numpy as np
import numpy.typing as npt

from common.privacy import Polygon

Image = npt.NDArray[np.uint8]


def raster(polygons: list[Polygon], width: int, height: int) -> Image:
    """A ``height`` x ``width`` uint8 image: 1 inside any polygon, 0 elsewhere. x = 1.0 is the
    last column, so a mask over the whole frame covers every pixel."""
    out = np.zeros((height, width), np.uint8)
    if not polygons:
        return out
    scale = np.asarray((width, height), np.float64)
    top = np.asarray((width - 1, height - 1), np.float64)
    pts = [np.clip(np.round(np.asarray(p) * scale), 0, top).astype(np.int32) for p in polygons]
    cv2.fillPoly(out, pts, 1)  # boundary pixels included: a mask covers a little more
    return out


class MaskCache:
    """The pixel masks of one set of polygons, for each frame size met."""

    def __init__(self, polygons: list[Polygon]) -> None:
        self.polygons = polygons
        self._by_size: dict[tuple[int, int], Image] = {}

    def mask(self, width: int, height: int) -> Image:
        got = self._by_size.get((width, height))
        if got is None:
            got = self._by_size[(width, height)] = raster(self.polygons, width, height)
        return got


def blackout(rgb: Image, cache: MaskCache) -> Image:
    """Fill ``cache``'s polygons in ``rgb`` with black, in place; returns ``rgb``."""
    if cache.polygons:
        h, w = rgb.shape[:2]
        # x - x where the mask is set, untouched elsewhere: about 20 times quicker than
        # numpy's boolean indexing on a 640 x 480 frame
        cv2.subtract(rgb, rgb, dst=rgb, mask=cache.mask(w, h))
    return rgb
