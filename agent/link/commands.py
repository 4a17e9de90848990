"""Remote commands and desired config on the agent (the contract's cmd/req and config/desired).

``decide_command`` and ``check_config`` are pure: a request in, an answer out. The
``Commands`` class holds what they act on (the link, the latest frame, the log ring) and
answers on cmd/res and config/reported. Every answer carries the request's ``cid``; a
request past its deadline, an unknown command or bad arguments get ``ok: false`` and a
reason, and change nothing.
"""

from __future__ import annotations

import base64
import collections
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common import privacy
from common.files import atomic_write

log = logging.getLogger(__name__)

MAX_LOG_LINES = 200
SNAPSHOT_MAX_BYTES = 45_000  # base64 of it must fit a cmd_res (64 KiB)
# desired-config keys the agent applies live: name -> (type, min, max)
LIVE_KEYS: dict[str, tuple[type, float, float]] = {
    "heartbeat_s": (float, 1.0, 3600.0),
}
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


class LogRing(logging.Handler):
    """The last lines the agent logged, for the ``logs`` command (never key material:
    nothing in the agent logs it)."""

    def __init__(self, size: int = 500) -> None:
        super().__init__()
        self.lines: collections.deque[str] = collections.deque(maxlen=size)
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.lines.append(self.format(record))
        except (ValueError, TypeError):  # a bad format string in someone's log call
            self.lines.append(str(record.msg))


@dataclass(frozen=True)
class Answer:
    ok: bool
    result: dict[str, Any] | None = None
    error: str | None = None

    def body(self, cid: str) -> dict[str, Any]:
        out: dict[str, Any] = {"cid": cid, "ok": self.ok}
        if self.result is not None:
            out["result"] = self.result
        if self.error is not None:
            out["error"] = self.error
        return out


@dataclass(frozen=True)
class Abilities:
    """What this box may do, from its config."""

    allow_reboot: bool
    reboot: Callable[[], None]
    restart: Callable[[], None]
    snapshot: Callable[[], bytes | None]  # the latest frame as JPEG, or None
    uptime_s: Callable[[], float]
    log_lines: Callable[[int], list[str]]
    # how the last snapshot was made (issue 20: policy, versions), sent with it; a snapshot
    # the privacy policy withholds raises PermissionError saying why
    snapshot_marking: Callable[[], dict[str, Any] | None] = lambda: None


def decide_command(body: dict[str, Any], now: float, can: Abilities) -> Answer:
    cmd, args = body["cmd"], body.get("args") or {}
    deadline = body.get("deadline")
    if isinstance(deadline, int | float) and now > deadline:
        return Answer(False, error="the deadline passed before the command arrived")
    if cmd == "ping":
        return Answer(True, {"pong": True, "uptime_s": round(can.uptime_s(), 1)})
    if cmd == "logs":
        n = args.get("lines", 50)
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_LOG_LINES:
            return Answer(False, error=f"lines must be an integer 1..{MAX_LOG_LINES}")
        lines = can.log_lines(n)
        while lines and len(json.dumps(lines)) > 50_000:
            lines = lines[1:]  # oldest first out: the answer must fit the contract
        return Answer(True, {"lines": lines})
    if cmd == "snapshot":
        try:
            jpeg = can.snapshot()
        except PermissionError as exc:
            return Answer(False, error=str(exc))
        if jpeg is None:
            return Answer(False, error="no frame from the camera yet")
        if len(jpeg) > SNAPSHOT_MAX_BYTES:
            return Answer(False, error=f"snapshot of {len(jpeg)} bytes is too large")
        result: dict[str, Any] = {"jpeg_b64": base64.b64encode(jpeg).decode(), "bytes": len(jpeg)}
        marking = can.snapshot_marking()
        if marking is not None:
            result["privacy"] = marking
        return Answer(True, result)
    if cmd == "restart":
        can.restart()
        return Answer(True, {"restarting": True})
    if cmd == "reboot":
        if not can.allow_reboot:
            return Answer(
                False, error="reboot is not permitted on this box (commands.allow_reboot)"
            )
        can.reboot()
        return Answer(True, {"rebooting": True})
    if cmd in ("relay", "read_sensors"):
        return Answer(False, error=f"{cmd} is a cabinet node command, not an agent one")
    return Answer(False, error=f"unknown command {cmd!r}")


def check_config(config: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
    """The settings to apply, or an error naming the first bad key (then nothing applies)."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        if key == "privacy":  # issue 20: the site's snapshot policy and the camera's masks
            try:
                out[key] = privacy.check_section(value)
            except privacy.MaskError as exc:
                return {}, f"privacy: {exc}"
            continue
        if key == "log_level":
            if value not in LOG_LEVELS:
                return {}, f"log_level must be one of {', '.join(LOG_LEVELS)}"
            out[key] = value
            continue
        spec = LIVE_KEYS.get(key)
        if spec is None:
            return {}, f"unknown or not live-applicable key {key!r}"
        _t, lo, hi = spec
        if isinstance(value, bool) or not isinstance(value, int | float) or not lo <= value <= hi:
            return {}, f"{key} must be a number in {lo:g}..{hi:g}"
        out[key] = float(value)
    return out, None


Publish = Callable[[str, dict[str, Any]], bool]


class Commands:
    """Answers the downlink. ``applied`` holds the live settings (heartbeat_s, ...)."""

    def __init__(self, state_dir: Path, publish: Publish | None, can: Abilities,
                 defaults: dict[str, Any],
                 on_privacy: Callable[[dict[str, Any]], object] | None = None) -> None:  # fmt: skip
        self.publish = publish
        self.can = can
        self.on_privacy = on_privacy  # applies a privacy section (it keeps its own state)
        self.applied: dict[str, Any] = dict(defaults)
        self._lock = threading.Lock()
        self._state = state_dir / "desired-config.json"
        self.version = 0
        self._load()

    def _load(self) -> None:
        try:
            saved = json.loads(self._state.read_text())
            settings, error = check_config(saved.get("config", {}))
            if error is None:
                self.applied.update(settings)
                self.version = int(saved.get("version", 0))
        except (OSError, ValueError, TypeError, AttributeError):
            pass  # nothing saved yet, or unreadable: defaults until the server says

    def _send(self, kind: str, body: dict[str, Any]) -> None:
        if self.publish is None or not self.publish(kind, body):
            log.warning("%s not sent: not connected (the server's deadline will say)", kind)

    def handle(self, kind: str, body: dict[str, Any]) -> None:
        if kind == "cmd_req":
            answer = decide_command(body, time.time(), self.can)
            log.info("command %s (%s): %s", body["cmd"], body["cid"],
                     "ok" if answer.ok else answer.error)  # fmt: skip
            self._send("cmd_res", answer.body(str(body["cid"])))
        elif kind == "config_desired":
            self._desired(body)

    def _desired(self, body: dict[str, Any]) -> None:
        version = int(body["version"])
        with self._lock:
            settings, error = check_config(body["config"])
            if error is None:
                self.applied.update(settings)
                self.version = version
                if "privacy" in settings and self.on_privacy is not None:
                    self.on_privacy(settings["privacy"])
                if "log_level" in settings:
                    logging.getLogger().setLevel(settings["log_level"])
                data = json.dumps({"version": version, "config": body["config"]}).encode()
                atomic_write(str(self._state), data, 0o600)
        report: dict[str, Any] = {"version": version, "ok": error is None}
        if error is not None:
            report["error"] = error
            log.warning("desired config version %d refused: %s", version, error)
        else:
            log.info("desired config version %d applied: %s", version, settings)
        self._send("config_reported", report)
