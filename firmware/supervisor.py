# The cabinet supervisor's decisions about the edge box: no I/O, only data in and out.
#
# The box shows it is alive on two channels: its MQTT heartbeats (which the node reads
# through the broker) and, where wired, a GPIO line it toggles. The box is judged silent
# only when every channel the node can observe now has been silent for box_deadline_s.
# A channel counts only once it has shown life (a line nobody toggles, or a box id whose
# heartbeats never came, never triggers anything), and the MQTT channel is blind while
# the node's own link is down: it restarts its clock when the link comes back, so a
# broker outage is never taken for a dead box.
#
# Silent beyond the deadline: the supervisor cuts the box's power for box_off_s, powers it
# on again and waits box_boot_s for it to come back; each further cycle without the box
# coming back doubles that wait (backoff). At most box_max_cycles automatic cycles in any
# 24 hours (kept across resets in the node's state); past that it reports the limit once
# and holds. Commands (relay on/off/cycle) act at once and are not limited.
#
# The node calls heard(), line() and link() as things happen and step() every loop; each
# returns events as (type, data) pairs, and ``relay`` says whether the power-cut relay
# should be energised (True = box power off: a normally-closed contact, so a node that
# resets or dies leaves the box powered).

try:
    import clock
except ImportError:  # CPython: the firmware is the package ``firmware``
    from firmware import clock

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

WATCH = "watch"
OFF = "off"  # power cut for a cycle, until ``until``
GRACE = "grace"  # power back on, waiting for the box to boot, until ``until``
HELD = "held"  # power cut by a command, until a command says otherwise

DAY_S = 86400
_MAX_GRACE_MS = DAY_S * 1000


class Supervisor:
    def __init__(self, settings: "dict[str, Any]", saved: object, now: int) -> None:
        self.state = WATCH
        self.relay = False
        self.until = now
        self.online = False
        self.failed = 0  # cycles in a row that did not bring the box back
        self.cycles: list[int] = []  # Unix times of automatic cycles (persisted)
        self.mqtt_armed = False  # heard the box's heartbeat at least once (persisted)
        self.line_armed = False  # saw an edge on the heartbeat line (persisted)
        self.dirty = False  # persisted fields changed: the node saves state()
        self.box = ""
        self._mqtt_last = now
        self._line_last = now
        self._line_level: bool | None = None
        self._judged_silent = False
        self._limit_noted = False
        self._life_seen = False
        self._cut_by = "supervisor"
        self.settings = settings
        if isinstance(saved, dict) and saved.get("box") == settings["box_id"]:
            self.box = settings["box_id"]
            self.mqtt_armed = saved.get("mqtt") is True
            self.line_armed = saved.get("line") is True
            cycles = saved.get("cycles")
            if isinstance(cycles, list):
                self.cycles = [t for t in cycles if isinstance(t, int)]
        self.configure(settings, now)

    def configure(self, settings: "dict[str, Any]", now: int) -> None:
        """New settings. Another box id starts from scratch: not armed, no cycles."""
        self.settings = settings
        if settings["box_id"] != self.box:
            self.box = settings["box_id"]
            self.mqtt_armed = False
            self.cycles = []
            self._mqtt_last = now
            self.dirty = True

    def state_dict(self) -> "dict[str, Any]":
        self.dirty = False
        return {
            "box": self.box,
            "mqtt": self.mqtt_armed,
            "line": self.line_armed,
            "cycles": self.cycles,
        }

    # ------------------------------------------------------------ observations

    def heard(self, now: int) -> None:
        """A valid heartbeat of the paired box arrived over MQTT."""
        self._mqtt_last = now
        self._life_seen = True
        if not self.mqtt_armed:
            self.mqtt_armed = True
            self.dirty = True

    def line(self, level: bool | None, now: int) -> None:
        """The heartbeat line's level (None: not wired). An edge is a sign of life."""
        if level is not None and self._line_level is not None and level != self._line_level:
            self._line_last = now
            self._life_seen = True
            if not self.line_armed:
                self.line_armed = True
                self.dirty = True
        self._line_level = level

    def link(self, up: bool, now: int) -> None:
        """The node's own MQTT link went up or down."""
        self.online = up
        if up:
            self._mqtt_last = now  # blind until now: the box gets a whole deadline

    # ------------------------------------------------------------ decisions

    def silence_ms(self, now: int) -> int | None:
        """How long every observable channel has been silent; None: nothing observable."""
        found = None
        if self.box and self.online and self.mqtt_armed:
            found = clock.ticks_diff(now, self._mqtt_last)
        if self._line_level is not None and self.line_armed:
            quiet = clock.ticks_diff(now, self._line_last)
            if found is None or quiet < found:
                found = quiet
        return found

    def _grace_ms(self) -> int:
        ms = int(self.settings["box_boot_s"] * 1000) << max(self.failed - 1, 0)
        return ms if ms < _MAX_GRACE_MS else _MAX_GRACE_MS

    def _recent(self, unix: int) -> list[int]:
        # Cycles in the last 24 h. Times far in the future came from a wrong clock: dropped.
        keep = [t for t in self.cycles if -DAY_S < unix - t < DAY_S]
        if keep != self.cycles:
            self.cycles = keep
            self.dirty = True
        return keep

    def step(self, now: int, unix: int) -> "list[tuple[str, dict[str, Any]]]":
        events: "list[tuple[str, dict[str, Any]]]" = []
        if self.state == OFF and clock.ticks_diff(now, self.until) >= 0:
            self._power_on(now, events)
        if self.state in (HELD, OFF):
            return events
        if self._life_seen and (self._judged_silent or self.failed):
            events.append(("box.back", {"cycles": self.failed}))
            self._judged_silent = False
            self._limit_noted = False
            self.failed = 0
            self.state = WATCH
        if self.state == GRACE:
            if clock.ticks_diff(now, self.until) < 0:
                return events
            self.state = WATCH
        silence = self.silence_ms(now)
        if silence is None or silence < int(self.settings["box_deadline_s"] * 1000):
            return events
        self._judged_silent = True
        self._life_seen = False
        limit = self.settings["box_max_cycles"]
        today = len(self._recent(unix))
        if today >= limit:
            if not self._limit_noted:
                self._limit_noted = True
                data = {"silent_s": silence // 1000, "today": today, "limit": limit}
                events.append(("box.cycle_limit", data))
            return events
        self.cycles.append(unix)
        self.dirty = True
        self.failed += 1
        self._cut(now, self.settings["box_off_s"], "supervisor")
        data = {
            "by": "supervisor",
            "silent_s": silence // 1000,
            "cycle": self.failed,
            "today": today + 1,
            "limit": limit,
        }
        events.append(("box.power_off", data))
        return events

    def _cut(self, now: int, off_s: float, by: str) -> None:
        self.state = OFF
        self.relay = True
        self._cut_by = by
        self._life_seen = False
        self.until = clock.ticks_add(now, int(off_s * 1000))

    def _power_on(self, now: int, events: "list[tuple[str, dict[str, Any]]]") -> None:
        self.relay = False
        self.state = GRACE
        self._life_seen = False
        self.until = clock.ticks_add(now, self._grace_ms())
        events.append(("box.power_on", {"by": self._cut_by}))

    # ------------------------------------------------------------ commands

    def command(self, action: str, off_s: float, now: int) -> "list[tuple[str, dict[str, Any]]]":
        """relay on / off / cycle from a command; not counted against the daily limit."""
        events: "list[tuple[str, dict[str, Any]]]" = []
        self.failed = 0
        if action == "on":
            if self.relay:
                self._cut_by = "command"
                self._power_on(now, events)
            return events
        data: "dict[str, Any]" = {"by": "command"}
        if action == "off":
            self.state = HELD
            self.relay = True
            self._life_seen = False
        else:
            self._cut(now, off_s, "command")
            data["off_s"] = off_s
        events.append(("box.power_off", data))
        return events
