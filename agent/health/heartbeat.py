"""Health for the heartbeat: a pure function that builds the body from readings, and a thin
reader of the host (psutil, /proc, /sys) that never raises for a missing sensor."""

from __future__ import annotations

import logging
import os
import platform
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import paho.mqtt
import psutil

from agent.vision.camera import CameraStats

log = logging.getLogger(__name__)

THERMAL_ROOT = Path("/sys/class/thermal")

# Plausible sensor range (the contract's): a reading outside it is a broken sensor.
_TEMP_MIN = -60.0
_TEMP_MAX = 150.0
_FPS_MAX = 1000.0
_LOAD_MAX = 10000.0


@dataclass(frozen=True)
class HostReadings:
    """What the host reported; None where it could not be read."""

    cpu_pct: float | None = None
    load1: float | None = None
    mem_used_pct: float | None = None
    disk_used_pct: float | None = None
    temp_c: float | None = None


def _clamp(value: float, low: float, high: float) -> float:
    return min(high, max(low, value))


def build_heartbeat(
    seq: int,
    interval_s: float,
    uptime_s: float,
    host: HostReadings,
    camera: CameraStats | None,
    versions: dict[str, str],
) -> dict[str, object]:
    """The heartbeat body (without v/id/ts, which ``contract.encode`` adds).

    Readings that are absent are left out; percentages are clamped to 0..100 (psutil can
    report a hair above 100); a temperature outside the plausible range is left out.
    """
    body: dict[str, object] = {
        "seq": seq,
        "kind": "agent",
        "interval_s": interval_s,
        "uptime_s": round(max(0.0, uptime_s), 1),
        "versions": dict(versions),
    }
    if host.cpu_pct is not None:
        body["cpu_pct"] = round(_clamp(host.cpu_pct, 0.0, 100.0), 1)
    if host.load1 is not None:
        body["load1"] = round(_clamp(host.load1, 0.0, _LOAD_MAX), 2)
    if host.mem_used_pct is not None:
        body["mem_used_pct"] = round(_clamp(host.mem_used_pct, 0.0, 100.0), 1)
    if host.disk_used_pct is not None:
        body["disk_used_pct"] = round(_clamp(host.disk_used_pct, 0.0, 100.0), 1)
    if host.temp_c is not None and _TEMP_MIN <= host.temp_c <= _TEMP_MAX:
        body["temp_c"] = round(host.temp_c, 1)
    if camera is not None:
        body["fps"] = round(_clamp(camera.fps, 0.0, _FPS_MAX), 2)
        body["frames"] = camera.frames
        body["camera"] = camera.state
    return body


def software_versions() -> dict[str, str]:
    try:
        agent_version = metadata.version("camfleet")
    except metadata.PackageNotFoundError:
        agent_version = "unknown"
    return {
        "agent": agent_version,
        "python": platform.python_version(),
        "paho": str(paho.mqtt.__version__),
    }


def process_age_s() -> float:
    """Seconds since this process started (0 when the OS will not say)."""
    try:
        return max(0.0, time.time() - psutil.Process().create_time())
    except (OSError, psutil.Error):
        return 0.0


def read_thermal_zones(root: Path = THERMAL_ROOT) -> float | None:
    """Hottest readable zone under ``root`` (sysfs gives millidegrees), or None."""
    hottest: float | None = None
    for temp_file in sorted(root.glob("thermal_zone*/temp")):
        try:
            value = int(temp_file.read_text().strip()) / 1000.0
        except (OSError, ValueError):
            continue
        if _TEMP_MIN <= value <= _TEMP_MAX and (hottest is None or value > hottest):
            hottest = value
    return hottest


def _psutil_temperature() -> float | None:
    sensors = getattr(psutil, "sensors_temperatures", None)
    if sensors is None:
        return None
    try:
        readings = sensors()
    except (OSError, RuntimeError):
        return None
    values = [
        t.current
        for entries in readings.values()
        for t in entries
        if _TEMP_MIN <= t.current <= _TEMP_MAX
    ]
    return max(values) if values else None


class HostReader:
    """Reads the host. CPU percent is measured between two calls (the first primes it)."""

    def __init__(self, state_dir: Path, thermal_root: Path = THERMAL_ROOT) -> None:
        self.state_dir = Path(state_dir)
        self.thermal_root = thermal_root
        psutil.cpu_percent(interval=None)

    def read(self) -> HostReadings:
        return HostReadings(
            cpu_pct=self._cpu(),
            load1=self._load1(),
            mem_used_pct=self._mem(),
            disk_used_pct=self._disk(),
            temp_c=self.temperature(),
        )

    def temperature(self) -> float | None:
        temp = read_thermal_zones(self.thermal_root)
        return temp if temp is not None else _psutil_temperature()

    @staticmethod
    def _cpu() -> float | None:
        try:
            return float(psutil.cpu_percent(interval=None))
        except (OSError, RuntimeError):
            return None

    @staticmethod
    def _load1() -> float | None:
        try:
            return os.getloadavg()[0]
        except (OSError, AttributeError):
            return None

    @staticmethod
    def _mem() -> float | None:
        try:
            return float(psutil.virtual_memory().percent)
        except (OSError, RuntimeError):
            return None

    def _disk(self) -> float | None:
        try:
            return float(psutil.disk_usage(str(self.state_dir)).percent)
        except OSError as exc:
            log.debug("disk usage of %s unreadable: %s", self.state_dir, exc)
            return None
