"""Image files for a replayed camera: binary PPMs made in pure Python, each one different
(a colour gradient and a square that moves from frame to frame)."""

from __future__ import annotations

from pathlib import Path

from agent.vision.camera import synthetic_ppm
from common.files import atomic_write


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
