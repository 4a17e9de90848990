"""The virtual rig: real processes on this machine behind the rig interface (hil_tests.rig).

- broker: Mosquitto with TLS client certificates (``procs.Broker``), restartable on its port;
- fleet server: the real server with its EST listener (``identity.IdentityServer``), SQLite
  by default or the ``database_url`` given;
- boxes: the real agent (``python -m agent.cli``) replaying a folder of frames as its camera;
- nodes: the MicroPython firmware on the unix port with the simulated board (``node.py``).

How each fault is made:

- power: cut = SIGKILL, off = the clean stop, on = start again with the same state dir;
  ``hang`` = SIGSTOP (a hung box: the process holds its sockets and does nothing).
  ``wire_relay(node, box)`` connects the node's simulated relay pin to the box's power:
  when the node energises it the box's power is cut, when it releases it the box starts.
- network: every device reaches the broker through its own ``NetProxy`` (hil_tests.netproxy).
- storage: the box's state dir is a size-limited tmpfs (``disk_bytes``; needs root, as a
  loop mount would); ``disk_fill`` writes a filler file until ENOSPC, keeping ``free_bytes``.
- clock: an offset file per device; the agent reads it through ``hil_tests.clock_shim``,
  the node through libfaketime (Debian ``faketime``; its true monotonic clock is kept).
- camera: the box's camera folder is rewritten in place, atomically, frame by frame:
  frozen = every frame the same picture, covered = dark, nearly uniform frames with a
  little sensor noise, restore = the clip's frames again.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from common.files import atomic_write
from common.settings import dump_toml
from fleet_server.broker.conf import render_acl
from fleet_server.identity.ca import CertificateAuthority, DeviceCredentials
from hil_tests.agent import agent_config
from hil_tests.clock_shim import format_offset
from hil_tests.identity import IdentityServer
from hil_tests.netproxy import NetProxy
from hil_tests.node import NodeProcess, node_process
from hil_tests.procs import REPO, Broker, Process, RigError, wait_for
from hil_tests.rig import CommandResult, Recorder, Rig, RigFault, Unsupported

FAKETIME_LIB = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1")
FILL_CHUNK = 1 << 16


def faketime_lib() -> Path | None:
    """libfaketime (Debian ``faketime``), for the node's wrong clock; None if missing."""
    for candidate in (FAKETIME_LIB, *Path("/usr/lib").glob("*/faketime/libfaketimeMT.so.1")):
        if candidate.exists():
            return candidate
    return None


@dataclass
class VDevice:
    name: str
    kind: str  # "agent" or "node"
    workdir: Path
    state_dir: Path
    proxy: NetProxy
    clock_file: Path
    proc: Process | None = None
    creds: DeviceCredentials | None = None
    camera_dir: Path | None = None
    frames: dict[str, bytes] = field(default_factory=dict)  # the clip, by file name
    mount: Path | None = None
    clock_ok: bool = True  # whether the clock seam is wired for this device


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
            self._stop_device(dev)
        if self.server is not None:
            self.server.stop()
        if self.broker is not None:
            self.broker.stop()

    def _stop_device(self, dev: VDevice) -> None:
        if dev.proc is not None:
            with contextlib.suppress(ProcessLookupError, OSError):
                if dev.proc.alive():
                    os.kill(dev.proc.pid, signal.SIGCONT)  # a hung one must be able to stop
            dev.proc.stop()
        dev.proxy.close()
        if dev.mount is not None:
            subprocess.run(["umount", "-l", str(dev.mount)], check=False, capture_output=True)

    def broker_restart(self, down_s: float = 0.0) -> None:
        """Mosquitto stopped and started again on the same port (clients all drop)."""
        if self.broker is None:
            raise RigError("rig not started")
        self.recorder.fault("broker", "broker restart", f"down {down_s:g} s")
        self.broker.stop()
        time.sleep(down_s)
        self.broker = Broker(self.ca, self.workdir / "broker", port=self.broker.port).start()
        self.recorder.restore("broker", "broker up")

    def pair(self, node: str, box: str) -> None:
        """Let ``node`` read ``box``'s heartbeats (the broker's pairing ACL), then reload."""
        if self.broker is None:
            raise RigError("rig not started")
        self.pairs[node] = box
        atomic_write(str(self.broker.layout.acl), render_acl(self.pairs).encode(), 0o644)
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
            self._mount_small_disk(dev, disk_bytes)
        camera_extra: dict[str, object] = {}
        if frames is not None:
            dev.camera_dir = workdir / "camera"
            self._load_clip(dev, frames)
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

    def _do_hang(self, device: str) -> None:
        """SIGSTOP: the process stops and holds its sockets."""
        os.kill(self._proc(device).pid, signal.SIGSTOP)

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

    def _proc(self, device: str) -> Process:
        dev = self.devices.get(device)
        if dev is None or dev.proc is None:
            raise RigFault(f"no device {device} with software on this rig")
        return dev.proc

    # ---------------------------------------------------------------- power / console

    def _do_power(self, device: str, action: str) -> None:
        proc = self._proc(device)
        if action == "on":
            if not proc.alive():
                proc.start()
        elif action == "off":
            proc.stop(grace=15)
        elif action == "cut":  # every process of the device: its session's group
            group = proc.pid if proc.proc is not None else None
            proc.kill()
            if group is not None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(group, signal.SIGKILL)  # children (a launcher's agent) too
        else:
            raise RigFault(f"unknown power action {action!r}")

    def _do_run(self, device: str, argv: list[str], timeout: float) -> CommandResult:
        dev = self.devices[device]
        out = subprocess.run(
            argv, cwd=dev.workdir, capture_output=True, text=True, timeout=timeout, check=False
        )
        return CommandResult(out.returncode, out.stdout, out.stderr)

    def _do_logs(self, device: str) -> str:
        return self._proc(device).log_text()

    # ---------------------------------------------------------------- network

    def _do_net(self, device: str, action: str, value: float) -> None:
        proxy = self.devices[device].proxy
        if action == "cut":
            proxy.cut()
        elif action == "delay":
            proxy.delay(value)
        elif action == "loss":
            proxy.loss(value)
        elif action == "corrupt":
            proxy.corrupt(value)
        elif action == "restore":
            proxy.restore()
        else:
            raise RigFault(f"unknown network action {action!r}")

    # ---------------------------------------------------------------- storage

    def _mount_small_disk(self, dev: VDevice, size: int) -> None:
        if os.geteuid() != 0:
            raise Unsupported("a small disk needs root here (tmpfs mount)")
        dev.state_dir.mkdir(parents=True, exist_ok=True)
        out = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(dev.state_dir)],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if out.returncode != 0:
            raise Unsupported(f"cannot mount a small disk: {out.stderr.strip()}")
        dev.mount = dev.state_dir

    def _do_disk(self, device: str, free_bytes: int | None) -> None:
        dev = self.devices[device]
        if dev.mount is None:
            raise Unsupported(f"{device} has no small disk (add it with disk_bytes=)")
        filler = dev.mount / ".rig-filler"
        if free_bytes is None:
            filler.unlink(missing_ok=True)
            return
        chunk = b"\0" * FILL_CHUNK
        with open(filler, "ab") as f:
            while True:
                try:
                    f.write(chunk)
                    f.flush()
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break
        if free_bytes:
            size = filler.stat().st_size
            os.truncate(filler, max(0, size - free_bytes))

    def disk_free(self, device: str) -> int:
        dev = self.devices[device]
        return shutil.disk_usage(dev.state_dir).free

    # ---------------------------------------------------------------- clock

    def _do_clock(self, device: str, offset_s: float) -> None:
        dev = self.devices[device]
        if not dev.clock_ok:
            raise Unsupported(f"{device}'s clock is not wired (add_node(wrong_clock=True))")
        atomic_write(str(dev.clock_file), format_offset(offset_s).encode(), 0o644)

    # ---------------------------------------------------------------- camera

    def _load_clip(self, dev: VDevice, frames: Path) -> None:
        if dev.camera_dir is None:
            raise Unsupported(f"{dev.name} has no replayed camera")
        files = sorted(p for p in Path(frames).iterdir() if p.is_file())
        if not files:
            raise RigFault(f"no frames in {frames}")
        dev.camera_dir.mkdir(parents=True, exist_ok=True)
        old = {p.name for p in dev.camera_dir.iterdir()}
        dev.frames = {p.name: p.read_bytes() for p in files}
        self._write_frames(dev, dev.frames)
        for name in old - set(dev.frames):
            (dev.camera_dir / name).unlink(missing_ok=True)

    def _write_frames(self, dev: VDevice, frames: dict[str, bytes]) -> None:
        if dev.camera_dir is None:
            raise Unsupported(f"{dev.name} has no replayed camera")
        for name, data in frames.items():
            atomic_write(str(dev.camera_dir / name), data, 0o644)

    def _do_camera(self, device: str, action: str, frames: Path | None) -> None:
        dev = self.devices[device]
        if dev.camera_dir is None or not dev.frames:
            raise Unsupported(f"{device} has no replayed camera")
        names = sorted(dev.frames)
        if action == "clip" and frames is not None:
            self._load_clip(dev, frames)
        elif action == "freeze":
            still = dev.frames[names[0]]
            self._write_frames(dev, dict.fromkeys(names, still))
        elif action == "cover":
            self._write_frames(dev, dict(zip(names, covered_frames(len(names)), strict=True)))
        elif action == "restore":
            self._write_frames(dev, dev.frames)
        else:
            raise RigFault(f"unknown camera action {action!r}")

    # ---------------------------------------------------------------- state

    def _do_read(self, device: str, relpath: str) -> bytes | None:
        path = self.devices[device].state_dir / relpath
        try:
            return path.read_bytes()
        except FileNotFoundError:
            return None


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


def wait_until(
    predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.1
) -> float:
    """Wait for ``predicate``; the seconds it took (RigError after ``timeout``)."""
    t0 = time.monotonic()
    wait_for(predicate, timeout, interval, what)
    return time.monotonic() - t0
