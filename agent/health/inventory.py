"""The box's hardware inventory for the heartbeat (sent once after each connect).

Reads what Linux says about the board: the model from the device tree (a Raspberry Pi) or
DMI (a PC), the serial from the device tree or a hash of /etc/machine-id (the id itself is
not sent), CPU count, memory, OS and kernel, and the camera backend with its sensor name
when the kernel names one. Every path is a parameter so tests can point it at a made-up
tree; a missing or unreadable file just leaves its field out.
"""

from __future__ import annotations

import hashlib
import os
import platform
from dataclasses import dataclass
from pathlib import Path

import psutil

_MAX_STR = 128


@dataclass(frozen=True)
class Paths:
    root: Path = Path("/")

    def at(self, path: str) -> Path:
        return self.root / path.lstrip("/")


def _read(path: Path) -> str | None:
    """A small text file without NULs and surrounding blanks (device-tree strings end in
    NUL), or None when absent, unreadable or empty."""
    try:
        text = path.read_bytes()[:4096].replace(b"\x00", b"").decode("utf-8", "replace")
    except OSError:
        return None
    text = text.strip()
    return text[:_MAX_STR] or None


def board_model(paths: Paths) -> str | None:
    model = _read(paths.at("/proc/device-tree/model"))
    if model:
        return model
    vendor = _read(paths.at("/sys/class/dmi/id/sys_vendor"))
    product = _read(paths.at("/sys/class/dmi/id/product_name"))
    if product and vendor and not product.startswith(vendor):
        return f"{vendor} {product}"[:_MAX_STR]
    return product


def board_serial(paths: Paths) -> str | None:
    """The device-tree serial, or the first 16 hex digits of sha256(machine-id)."""
    serial = _read(paths.at("/proc/device-tree/serial-number"))
    if serial:
        return serial
    machine_id = _read(paths.at("/etc/machine-id"))
    if machine_id:
        return "mid-" + hashlib.sha256(machine_id.encode()).hexdigest()[:16]
    return None


def os_name(paths: Paths) -> str | None:
    text = _read(paths.at("/etc/os-release"))
    for line in (text or "").splitlines():
        key, _, value = line.partition("=")
        if key == "PRETTY_NAME":
            return value.strip().strip('"')[:_MAX_STR] or None
    return None


def camera_sensor(paths: Paths) -> str | None:
    """The sensor the kernel names (a V4L2 sub-device such as ``imx708 10-001a``, else
    the first video device's name)."""
    base = paths.at("/sys/class/video4linux")
    try:
        entries = sorted(base.iterdir())
    except OSError:
        return None
    subdevs = [e for e in entries if e.name.startswith("v4l-subdev")]
    videos = [e for e in entries if e.name.startswith("video")]
    for entry in subdevs + videos:
        name = _read(entry / "name")
        if name:
            return name
    return None


def read_hardware(camera_backend: str, paths: Paths | None = None) -> dict[str, object]:
    """The inventory dict (contract heartbeat field ``hardware``); absent facts left out."""
    p = paths or Paths()
    hw: dict[str, object] = {"camera_backend": camera_backend}
    facts: dict[str, object | None] = {
        "model": board_model(p),
        "serial": board_serial(p),
        "os": os_name(p),
        "kernel": platform.release() or None,
        "arch": platform.machine() or None,
        "cpus": os.cpu_count(),
        "camera_sensor": camera_sensor(p) if camera_backend in ("opencv", "picamera2") else None,
    }
    try:
        facts["mem_mb"] = int(psutil.virtual_memory().total // (1024 * 1024))
    except (OSError, RuntimeError):
        facts["mem_mb"] = None
    hw.update({k: v for k, v in facts.items() if v is not None})
    return hw
