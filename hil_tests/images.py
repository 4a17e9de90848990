"""Image files for a replayed camera: binary PPMs made in pure Python, each one different
(a colour gradient and a square that moves from frame to frame), and the frames of a
covered lens."""

from __future__ import annotations

from pathlib import Path

from agent.vision.camera_sim import synthetic_ppm
from common.files import atomic_write
from hil_tests.rig import RigFault


def write_test_images(
    folder: Path, count: int = 20, width: int = 160, height: int = 120
) -> list[Path]:
    """Write ``frame-0000.ppm`` ... into ``folder``; returns the paths in order."""
    if count < 1:
        raise ValueError("count must be at least 1")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"frame-{i:04d}.ppm"
        atomic_write(str(path), synthetic_ppm(width, height, i), 0o644)
        paths.append(path)
    return paths


def covered_frames(count: int, width: int = 320, height: int = 240) -> list[bytes]:
    """A lens under a cover: dark, nearly uniform PNGs, each with its own little noise."""
    import cv2
    import numpy as np

    rng = np.random.default_rng(11)
    out = []
    for _ in range(count):
        img = np.clip(rng.normal(6, 1.0, (height, width, 3)), 0, 255).astype(np.uint8)
        ok, buf = cv2.imencode(".png", img)
        if not ok:
            raise RigFault("PNG encoding failed")
        out.append(bytes(buf))
    return out
