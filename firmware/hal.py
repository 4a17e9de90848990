# The hardware seam: everything the node needs of its board, behind one small interface.
#
# HAL is the interface, and a board with nothing attached ("none"). Two implementations
# of the same interface: hal_machine.MachineHAL drives real pins through ``machine``;
# hal_sim.SimHAL runs on the unix port with pins and sensors that a test or a rig drives
# through files. Each is imported only when chosen, so nothing touches hardware at import
# time and a board carries no simulator.
#
# The relay is the edge box's power cut: energised (True) = box power OFF, through a
# normally-closed contact, so a board that resets or dies (its pins float back to 0)
# leaves the box powered.

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

RESET_CAUSES = ("power_on", "hard", "wdt", "deep_sleep", "soft", "unknown")


class HALError(Exception):
    """The HAL cannot be set up as configured."""


class HAL:
    """A board with nothing attached: no sensors, a relay that goes nowhere."""

    name = "none"

    def __init__(self) -> None:
        self._relay = False

    def set_relay(self, on: bool) -> None:
        """Energise (True: box power off) or release the power-cut relay."""
        self._relay = bool(on)

    def relay(self) -> bool:
        return self._relay

    def door_open(self) -> bool | None:
        """True when the cabinet door is open, None when there is no door switch."""
        return None

    def tamper(self) -> bool | None:
        """True while the tamper switch is tripped, None when there is none."""
        return None

    def mains_ok(self) -> bool | None:
        """True while mains power is present, None when it is not sensed."""
        return None

    def battery_v(self) -> float | None:
        return None

    def box_line(self) -> bool | None:
        """Level of the edge box's heartbeat line, None when not wired."""
        return None

    def climate(self) -> "tuple[float, float] | None":
        """(temperature C, humidity %) from the cabinet sensor, None when there is none.
        Raises OSError when the sensor is there and fails."""
        return None

    def temperature_c(self) -> float | None:
        """The microcontroller's own temperature, None when it has no sensor."""
        return None

    def rssi(self) -> int | None:
        return None

    def reset_cause(self) -> str:
        return "unknown"

    def network_up(self, cfg: "dict[str, Any]") -> bool:
        """Bring the board's network up (Wi-Fi, clock) if it has to; False: not yet."""
        return True

    def watchdog_start(self, timeout_ms: int) -> None:
        """Arm the watchdog; once armed it cannot be stopped, only fed."""

    def watchdog_feed(self) -> None:
        pass

    def reset(self) -> None:
        """Reset the board now (machine.reset()); does not return."""
        raise SystemExit(4)


def make_hal(cfg: "dict[str, Any]") -> HAL:
    """The HAL ``cfg["hal"]`` names: "sim" (files in cfg["sim_dir"]), "machine" or "none"."""
    kind = cfg.get("hal", "sim")
    if kind == "sim":
        try:
            import hal_sim
        except ImportError:
            from firmware import hal_sim
        return hal_sim.SimHAL(cfg.get("sim_dir") or "sim")
    if kind == "machine":
        try:
            import hal_machine
        except ImportError:
            from firmware import hal_machine
        return hal_machine.MachineHAL(cfg.get("pins") or {}, cfg.get("battery_scale", 5.0))
    if kind == "none":
        return HAL()
    raise HALError("unknown hal %r (sim, machine or none)" % (kind,))
