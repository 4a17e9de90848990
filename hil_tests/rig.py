"""The rig interface: what a scenario may do to a device, whatever the rig is made of.

A rig holds devices by name (``box-1``, ``node-1``, as the rig file or the virtual rig
names them) and offers, for each:

- power: ``power_on``, ``power_off`` (a clean shutdown), ``power_cut`` (the plug pulled);
- console: ``run`` a command on the device, read its ``logs``;
- network: ``net_cut``, ``net_delay``, ``net_loss``, ``net_corrupt``, ``net_restore``;
- storage: ``disk_fill`` (leave ``free_bytes``), ``disk_restore``;
- clock: ``clock_set`` (an absolute time), ``clock_skew`` (seconds off), ``clock_restore``;
- camera: ``camera_clip`` (replay a folder of frames), ``camera_freeze``, ``camera_cover``,
  ``camera_restore``;
- state: ``read_file`` (a file of the device's state, for invariants on the device).

Every action is recorded by the rig's ``Recorder`` (time, device, fault, detail) before it
is done, so the report's timeline shows what was injected and when, beside what the
scenario observed. The implementations (``virtual_rig.VirtualRig``, ``real_rig.RealRig``)
fill in the ``_do_*`` methods; a rig that cannot do something raises ``Unsupported`` and
the scenario is skipped with that reason.
"""

from __future__ import annotations

import json
import time
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from common.files import atomic_write


class RigFault(Exception):
    """A rig action failed (the rig, not the system under test)."""


class Unsupported(RigFault):
    """This rig cannot do that (e.g. a real camera cannot be frozen without a replay dir)."""


@dataclass(frozen=True)
class CommandResult:
    returncode: int
    stdout: str
    stderr: str


@dataclass(frozen=True)
class Record:
    t: float  # Unix time (the rig host's true clock)
    scenario: str
    kind: str  # "fault", "restore", "observe", "check", "start", "end"
    device: str
    what: str
    detail: str = ""


@dataclass
class ScenarioFigures:
    """What the report shows for each scenario."""

    name: str
    rig: str
    invariant: str
    started: float
    ended: float = 0.0
    outcome: str = "running"
    faults: int = 0
    events_produced: int | None = None
    events_stored: int | None = None
    duplicates: int | None = None
    recover_s: float | None = None
    notes: list[str] = field(default_factory=list)


class Recorder:
    """Faults injected and what the system did, per scenario, for the report."""

    def __init__(self) -> None:
        self.records: list[Record] = []
        self.scenarios: list[ScenarioFigures] = []
        self.current: ScenarioFigures | None = None

    def start(self, name: str, rig: str, invariant: str) -> ScenarioFigures:
        self.current = ScenarioFigures(name, rig, invariant, time.time())
        self.scenarios.append(self.current)
        self._add("start", "-", name, invariant)
        return self.current

    def end(self, outcome: str) -> None:
        if self.current is None:
            return
        self.current.ended = time.time()
        self.current.outcome = outcome
        self._add("end", "-", outcome)
        self.current = None

    def fault(self, device: str, what: str, detail: str = "") -> None:
        if self.current is not None:
            self.current.faults += 1
        self._add("fault", device, what, detail)

    def restore(self, device: str, what: str, detail: str = "") -> None:
        self._add("restore", device, what, detail)

    def observe(self, device: str, what: str, detail: str = "") -> None:
        self._add("observe", device, what, detail)

    def check(self, what: str, detail: str = "") -> None:
        """An invariant that held (a failing one ends the scenario with the assertion)."""
        self._add("check", "-", what, detail)

    def figures(self, **values: Any) -> None:
        """Set events_produced, events_stored, duplicates, recover_s of the scenario."""
        if self.current is None:
            return
        for key, value in values.items():
            if not hasattr(self.current, key) or key in ("name", "rig", "started"):
                raise KeyError(f"no figure {key!r}")
            setattr(self.current, key, value)

    def note(self, text: str) -> None:
        if self.current is not None:
            self.current.notes.append(text)

    def _add(self, kind: str, device: str, what: str, detail: str = "") -> None:
        name = self.current.name if self.current is not None else "-"
        self.records.append(Record(time.time(), name, kind, device, what, detail))

    def to_json(self) -> dict[str, Any]:
        return {
            "records": [asdict(r) for r in self.records],
            "scenarios": [asdict(s) for s in self.scenarios],
        }

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(str(path), json.dumps(self.to_json(), indent=1).encode(), 0o644)


class FleetApi(Protocol):
    """The fleet server's REST API as a rig reaches it: ``get`` as a read-only user, ``call``
    with the rig's admin token."""

    def get(self, path: str, token: str | None = None) -> tuple[int, Any]: ...

    def call(
        self, method: str, path: str, body: object = None, token: str | None = None
    ) -> tuple[int, Any]: ...


class Rig(ABC):
    """One rig; see the module docstring. Device names are the rig's own."""

    kind = "rig"

    def __init__(self, recorder: Recorder | None = None) -> None:
        self.recorder = recorder or Recorder()

    @property
    @abstractmethod
    def api(self) -> FleetApi:
        """The fleet server the rig's devices report to."""

    # ---------------------------------------------------------------- devices
    @abstractmethod
    def box(
        self,
        label: str,
        *,
        frames: Path | None = None,
        extra: dict[str, object] | None = None,
        disk_bytes: int | None = None,
    ) -> str:
        """A Linux box running the agent, powered off; its device id.

        The virtual rig makes a new one (``extra``: agent config; ``frames``: its replayed
        camera; ``disk_bytes``: a small disk for its state). A real rig hands out the box of
        its rig file, configured as docs/hil.md says, and refuses (``Unsupported``) what its
        hardware cannot do."""

    @abstractmethod
    def node(
        self,
        label: str,
        *,
        box: str | None = None,
        extra: dict[str, object] | None = None,
        wrong_clock: bool = False,
    ) -> str:
        """A cabinet node, powered off; with ``box`` it supervises that box (its relay
        switches the box's power). ``wrong_clock``: its clock can be set."""

    def hang(self, device: str) -> None:
        """The device's software stops answering but keeps its connections (a hung box)."""
        self.recorder.fault(device, "hung")
        self._do_hang(device)

    def _do_hang(self, device: str) -> None:
        raise Unsupported(f"the {self.kind} rig cannot hang {device}")

    # features a scenario may need beyond the interface (e.g. "fleet_sim", "provision")
    features: frozenset[str] = frozenset()

    def require(self, feature: str) -> None:
        if feature not in self.features:
            raise Unsupported(f"the {self.kind} rig has no {feature!r}")

    # ---------------------------------------------------------------- power
    def power_on(self, device: str) -> None:
        self.recorder.restore(device, "power on")
        self._do_power(device, "on")

    def power_off(self, device: str) -> None:
        self.recorder.fault(device, "power off", "clean shutdown")
        self._do_power(device, "off")

    def power_cut(self, device: str) -> None:
        self.recorder.fault(device, "power cut", "no shutdown")
        self._do_power(device, "cut")

    # ---------------------------------------------------------------- console
    def run(self, device: str, argv: list[str], timeout: float = 60.0) -> CommandResult:
        self.recorder.observe(device, "console", " ".join(argv)[:200])
        return self._do_run(device, argv, timeout)

    def logs(self, device: str) -> str:
        return self._do_logs(device)

    # ---------------------------------------------------------------- network
    def net_cut(self, device: str) -> None:
        self.recorder.fault(device, "network cut")
        self._do_net(device, "cut", 0.0)

    def net_delay(self, device: str, seconds: float) -> None:
        self.recorder.fault(device, "network delay", f"{seconds:g} s")
        self._do_net(device, "delay", seconds)

    def net_loss(self, device: str, fraction: float) -> None:
        self.recorder.fault(device, "network loss", f"{fraction:.0%}")
        self._do_net(device, "loss", fraction)

    def net_corrupt(self, device: str, fraction: float) -> None:
        self.recorder.fault(device, "network corrupt", f"{fraction:.0%} of chunks")
        self._do_net(device, "corrupt", fraction)

    def net_restore(self, device: str) -> None:
        self.recorder.restore(device, "network restored")
        self._do_net(device, "restore", 0.0)

    # ---------------------------------------------------------------- storage
    def disk_fill(self, device: str, free_bytes: int = 0) -> None:
        self.recorder.fault(device, "disk full", f"{free_bytes} bytes left")
        self._do_disk(device, free_bytes)

    def disk_restore(self, device: str) -> None:
        self.recorder.restore(device, "disk space back")
        self._do_disk(device, None)

    # ---------------------------------------------------------------- clock
    def clock_set(self, device: str, unix_time: float) -> None:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(unix_time))
        self.recorder.fault(device, "clock set", stamp)
        self._do_clock(device, unix_time - time.time())

    def clock_skew(self, device: str, seconds: float) -> None:
        self.recorder.fault(device, "clock skew", f"{seconds:+.0f} s")
        self._do_clock(device, seconds)

    def clock_restore(self, device: str) -> None:
        self.recorder.restore(device, "clock corrected")
        self._do_clock(device, 0.0)

    # ---------------------------------------------------------------- camera
    def camera_clip(self, device: str, frames: Path) -> None:
        self.recorder.observe(device, "camera clip", str(frames))
        self._do_camera(device, "clip", frames)

    def camera_freeze(self, device: str) -> None:
        self.recorder.fault(device, "camera frozen")
        self._do_camera(device, "freeze", None)

    def camera_cover(self, device: str) -> None:
        self.recorder.fault(device, "camera covered")
        self._do_camera(device, "cover", None)

    def camera_restore(self, device: str) -> None:
        self.recorder.restore(device, "camera restored")
        self._do_camera(device, "restore", None)

    # ---------------------------------------------------------------- device state
    def read_file(self, device: str, relpath: str) -> bytes | None:
        """A file of the device's state directory (None when it does not exist)."""
        return self._do_read(device, relpath)

    # ---------------------------------------------------------------- implementations
    @abstractmethod
    def _do_power(self, device: str, action: str) -> None: ...

    @abstractmethod
    def _do_run(self, device: str, argv: list[str], timeout: float) -> CommandResult: ...

    @abstractmethod
    def _do_logs(self, device: str) -> str: ...

    @abstractmethod
    def _do_net(self, device: str, action: str, value: float) -> None: ...

    @abstractmethod
    def _do_disk(self, device: str, free_bytes: int | None) -> None: ...

    @abstractmethod
    def _do_clock(self, device: str, offset_s: float) -> None: ...

    @abstractmethod
    def _do_camera(self, device: str, action: str, frames: Path | None) -> None: ...

    @abstractmethod
    def _do_read(self, device: str, relpath: str) -> bytes | None: ...

    @abstractmethod
    def close(self) -> None:
        """Stop what the rig started; leave the hardware powered and the network whole."""
