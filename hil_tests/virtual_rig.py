"""The virtual rig: real processes on this machine behind the rig interface (hil_tests.rig).

- broker: Mosquitto with TLS client certificates (``procs.Broker``), restartable on its port;
- fleet server: the real server with its EST listener (``identity.IdentityServer``), SQLite
  by default or the ``database_url`` given;
- boxes: the real agent (``python -m agent.cli``) replaying a folder of frames as its camera;
- nodes: the MicroPython firmware on the unix port with the simulated board (``node.py``).

``wire_relay(node, box)`` connects the node's simulated relay pin to the box's power: when
the node energises it the box's power is cut, when it releases it the box starts. How each
fault is made on a device is ``hil_tests.virtual_device``.
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

from common.files import atomic_write
from common.settings import dump_toml
from fleet_server.broker.conf import render_acl, render_pairs
from fleet_server.identity.ca import CertificateAuthority, DeviceCredentials
from hil_tests.agent import agent_config
from hil_tests.clock_shim import format_offset
from hil_tests.identity import IdentityServer
from hil_tests.netproxy import NetProxy
from hil_tests.node import NodeProcess, node_process
from hil_tests.procs import REPO, Broker, Process, RigError
from hil_tests.rig import CommandResult, Recorder, Rig, RigFault, Unsupported
from hil_tests.virtual_device import VDevice, faketime_lib


class VirtualRig(Rig):
    kind = "virtual"
    features = frozenset({"fleet_sim", "provision", "relay", "revoke", "broker", "hang"})

    def __init__(
        self,
        workdir: Path,
        ca: CertificateAuthority,
        recorder: Recorder | None = None,
        database_url: str | None = None,
    ) -> None:
        super().__init__(recorder)
        self.workdir = Path(workdir)
        self.ca = ca
        self.database_url = database_url
        self.devices: dict[str, VDevice] = {}
        self.pairs: dict[str, str] = {}
        self.broker: Broker | None = None
        self.server: IdentityServer | None = None
        self._relays: list[tuple[threading.Event, threading.Thread]] = []

    # ---------------------------------------------------------------- lifecycle

    def start(self) -> VirtualRig:
        self.broker = Broker(self.ca, self.workdir / "broker").start()
        self.server = IdentityServer(
            self.workdir / "server", self.ca, self.broker, database_url=self.database_url
        ).start_all()
        return self

    @property
    def api(self) -> IdentityServer:
        if self.server is None:
            raise RigError("rig not started")
        return self.server

    @property
    def broker_port(self) -> int:
        if self.broker is None:
            raise RigError("rig not started")
        return self.broker.port

    def close(self) -> None:
        for stop, thread in self._relays:
            stop.set()
            thread.join(timeout=5)
        for dev in self.devices.values():
            dev.stop()
        if self.server is not None:
            self.server.stop()
        if self.broker is not None:
            self.broker.stop()

    def broker_restart(self, down_s: float = 0.0) -> None:
        """Mosquitto stopped and started again on the same port (clients all drop)."""
        if self.broker is None:
            raise RigError("rig not started")
        self.recorder.fault("broker", "broker restart", f"down {down_s:g} s")
        self.broker.stop()
        time.sleep(down_s)
        self.broker = Broker(
            self.ca, self.workdir / "broker", port=self.broker.port, pairs=self.pairs
        ).start()
        self.recorder.restore("broker", "broker up")

    def pair(self, node: str, box: str) -> None:
        """Let ``node`` read ``box``'s heartbeats (the broker's pairing ACL), then reload."""
        if self.broker is None:
            raise RigError("rig not started")
        self.pairs[node] = box
        atomic_write(str(self.broker.layout.acl), render_acl(self.pairs).encode(), 0o644)
        # the camfleet_acl plugin reads its pairs file again on the reload
        pairs_file = self.broker.layout.acl.with_name("pairs")
        atomic_write(str(pairs_file), render_pairs(self.pairs).encode(), 0o644)
        self.broker.reload()

    # ---------------------------------------------------------------- devices

    def _device_dirs(self, name: str) -> tuple[Path, NetProxy, Path]:
        if name in self.devices:
            raise RigError(f"device {name} exists already")
        workdir = self.workdir / "devices" / name
        workdir.mkdir(parents=True, exist_ok=True)
        clock_file = workdir / "clock-offset"
        atomic_write(str(clock_file), format_offset(0).encode(), 0o644)
        return workdir, NetProxy(self.broker_port, name=f"net-{name}"), clock_file

    def network_port(self, name: str) -> int:
        """The port a device must use to reach the broker through its network."""
        return self.devices[name].proxy.port

    def add_agent(
        self,
        name: str,
        *,
        frames: Path | None = None,
        extra: dict[str, object] | None = None,
        heartbeat_s: float = 1,
        keepalive_s: int = 5,
        disk_bytes: int | None = None,
        creds: DeviceCredentials | None = None,
    ) -> VDevice:
        """A box running the real agent (not started: ``power_on``)."""
        workdir, proxy, clock_file = self._device_dirs(name)
        creds = creds or self.ca.issue_device(name, workdir / "creds")
        dev = VDevice(name, "agent", workdir, workdir / "state", proxy, clock_file, creds=creds)
        self.devices[name] = dev
        if disk_bytes is not None:
            dev.mount_small_disk(disk_bytes)
        camera_extra: dict[str, object] = {}
        if frames is not None:
            dev.camera_dir = workdir / "camera"
            dev.load_clip(frames)
            camera_extra = {"camera": {"type": "files", "path": str(dev.camera_dir), "fps": 5.0}}
        config = agent_config(
            creds, proxy.port, workdir, heartbeat_s=heartbeat_s, keepalive_s=keepalive_s,
            extra={**camera_extra, **(extra or {})},
        )  # fmt: skip
        path = workdir / "agent.toml"
        path.write_text(dump_toml(config), encoding="utf-8")
        self.adopt(name, self._agent_argv(dev, path))
        return dev

    def adopt(self, name: str, argv: list[str], cwd: Path = REPO) -> None:
        dev = self.devices[name]
        dev.proc = Process(f"agent-{name}", argv, dev.workdir / "agent.log", cwd=cwd)

    def _agent_argv(self, dev: VDevice, config: Path) -> list[str]:
        shim = [sys.executable, "-m", "hil_tests.clock_shim", str(dev.clock_file)]
        return [*shim, "-m", "agent.cli", "--config", str(config)]

    def adopt_config(self, name: str, config: Path, state_dir: Path) -> None:
        """Run the agent of a reserved box from a config someone else wrote (the
        provisioning tool), as systemd would."""
        dev = self.devices[name]
        dev.state_dir = state_dir
        self.adopt(name, self._agent_argv(dev, config))

    def reserve(self, name: str, kind: str = "agent") -> VDevice:
        """A device slot (network, clock) before its software exists, e.g. for provisioning."""
        workdir, proxy, clock_file = self._device_dirs(name)
        dev = VDevice(name, kind, workdir, workdir / "state", proxy, clock_file)
        self.devices[name] = dev
        return dev

    def add_node(
        self,
        name: str,
        *,
        extra: dict[str, object] | None = None,
        heartbeat_s: float = 1,
        keepalive_s: int = 5,
        wrong_clock: bool = False,
    ) -> VDevice:
        """A MicroPython node on the unix port (not started: ``power_on``).

        ``wrong_clock`` runs it under libfaketime so ``clock_set``/``clock_skew`` reach it.
        """
        workdir, proxy, clock_file = self._device_dirs(name)
        creds = self.ca.issue_device(name, workdir / "creds")
        proc: NodeProcess = node_process(
            creds, proxy.port, workdir, heartbeat_s=heartbeat_s, keepalive_s=keepalive_s,
            sim_dir=workdir / "sim", extra=extra,
        )  # fmt: skip
        dev = VDevice(name, "node", workdir, workdir / "state", proxy, clock_file, proc, creds)
        dev.clock_ok = False
        if wrong_clock:
            lib = faketime_lib()
            if lib is None:
                raise Unsupported("libfaketime is missing (Debian package faketime)")
            proc.env = {
                "LD_PRELOAD": str(lib),
                "FAKETIME_TIMESTAMP_FILE": str(clock_file),
                "FAKETIME_CACHE_DURATION": "1",
                "DONT_FAKE_MONOTONIC": "1",
                "NO_FAKE_STAT": "1",
            }
            dev.clock_ok = True
        self.devices[name] = dev
        return dev

    def sim_dir(self, node: str) -> Path:
        return self.devices[node].workdir / "sim"

    def wire_relay(self, node: str, box: str, poll_s: float = 0.05) -> None:
        """The node's relay pin drives the box's power: energised = power cut."""
        pin = self.sim_dir(node) / "pin_relay"
        stop = threading.Event()

        def watch() -> None:
            cut = False
            while not stop.wait(poll_s):
                try:
                    energised = pin.read_text().strip() == "1"
                except OSError:
                    continue
                if energised and not cut:
                    cut = True
                    self.recorder.observe(node, "relay energised", f"{box} power cut")
                    self._do_power(box, "cut")
                elif not energised and cut:
                    cut = False
                    self.recorder.observe(node, "relay released", f"{box} power on")
                    self._do_power(box, "on")

        thread = threading.Thread(target=watch, name=f"relay-{node}", daemon=True)
        thread.start()
        self._relays.append((stop, thread))

    # the rig interface's device makers
    def box(
        self,
        label: str,
        *,
        frames: Path | None = None,
        extra: dict[str, object] | None = None,
        disk_bytes: int | None = None,
    ) -> str:
        return self.add_agent(label, frames=frames, extra=extra, disk_bytes=disk_bytes).name

    def node(
        self,
        label: str,
        *,
        box: str | None = None,
        extra: dict[str, object] | None = None,
        wrong_clock: bool = False,
    ) -> str:
        settings = dict(extra or {})
        if box is not None:
            settings["box_id"] = box
        name = self.add_node(label, extra=settings, wrong_clock=wrong_clock).name
        if box is not None:
            self.pair(name, box)
            self.wire_relay(name, box)
        return name

    # ---------------------------------------------------------------- the interface

    def _with_software(self, device: str) -> VDevice:
        dev = self.devices.get(device)
        if dev is None or dev.proc is None:
            raise RigFault(f"no device {device} with software on this rig")
        return dev

    def _do_power(self, device: str, action: str) -> None:
        self._with_software(device).power(action)

    def _do_hang(self, device: str) -> None:
        self._with_software(device).hang()

    def _do_run(self, device: str, argv: list[str], timeout: float) -> CommandResult:
        return self.devices[device].run(argv, timeout)

    def _do_logs(self, device: str) -> str:
        return self._with_software(device).logs()

    def _do_net(self, device: str, action: str, value: float) -> None:
        self.devices[device].net(action, value)

    def _do_disk(self, device: str, free_bytes: int | None) -> None:
        self.devices[device].fill_disk(free_bytes)

    def disk_free(self, device: str) -> int:
        return self.devices[device].disk_free()

    def _do_clock(self, device: str, offset_s: float) -> None:
        self.devices[device].set_clock(offset_s)

    def _do_camera(self, device: str, action: str, frames: Path | None) -> None:
        self.devices[device].camera(action, frames)

    def _do_read(self, device: str, relpath: str) -> bytes | None:
        return self.devices[device].read_state(relpath)
