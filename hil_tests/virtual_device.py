"""One device of the virtual rig (``hil_tests.virtual_rig``) and how each fault is made on it.

- power: cut = SIGKILL (of the device's whole process group), off = the clean stop, on =
  start again with the same state dir; ``hang`` = SIGSTOP (a hung box: the process holds its
  sockets and does nothing).
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
from dataclasses import dataclass, field
from pathlib import Path

from common.files import atomic_write
from fleet_server.identity.ca import DeviceCredentials
from hil_tests.clock_shim import format_offset
from hil_tests.images import covered_frames
from hil_tests.netproxy import NetProxy
from hil_tests.procs import Process
from hil_tests.rig import CommandResult, RigFault, Unsupported

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

    def software(self) -> Process:
        if self.proc is None:
            raise RigFault(f"no device {self.name} with software on this rig")
        return self.proc

    def stop(self) -> None:
        """Everything of the device gone: its process, its network, its small disk."""
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError, OSError):
                if self.proc.alive():
                    os.kill(self.proc.pid, signal.SIGCONT)  # a hung one must be able to stop
            self.proc.stop()
        self.proxy.close()
        if self.mount is not None:
            subprocess.run(["umount", "-l", str(self.mount)], check=False, capture_output=True)

    # ---------------------------------------------------------------- power / console

    def power(self, action: str) -> None:
        proc = self.software()
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

    def hang(self) -> None:
        """SIGSTOP: the process stops and holds its sockets."""
        os.kill(self.software().pid, signal.SIGSTOP)

    def logs(self) -> str:
        return self.software().log_text()

    def run(self, argv: list[str], timeout: float) -> CommandResult:
        out = subprocess.run(
            argv, cwd=self.workdir, capture_output=True, text=True, timeout=timeout, check=False
        )
        return CommandResult(out.returncode, out.stdout, out.stderr)

    # ---------------------------------------------------------------- network

    def net(self, action: str, value: float) -> None:
        if action == "cut":
            self.proxy.cut()
        elif action == "delay":
            self.proxy.delay(value)
        elif action == "loss":
            self.proxy.loss(value)
        elif action == "corrupt":
            self.proxy.corrupt(value)
        elif action == "restore":
            self.proxy.restore()
        else:
            raise RigFault(f"unknown network action {action!r}")

    # ---------------------------------------------------------------- storage

    def mount_small_disk(self, size: int) -> None:
        if os.geteuid() != 0:
            raise Unsupported("a small disk needs root here (tmpfs mount)")
        self.state_dir.mkdir(parents=True, exist_ok=True)
        out = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(self.state_dir)],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if out.returncode != 0:
            raise Unsupported(f"cannot mount a small disk: {out.stderr.strip()}")
        self.mount = self.state_dir

    def fill_disk(self, free_bytes: int | None) -> None:
        """Fill the small disk up to ``free_bytes`` left; None: empty it again."""
        if self.mount is None:
            raise Unsupported(f"{self.name} has no small disk (add it with disk_bytes=)")
        filler = self.mount / ".rig-filler"
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

    def disk_free(self) -> int:
        return shutil.disk_usage(self.state_dir).free

    # ---------------------------------------------------------------- clock

    def set_clock(self, offset_s: float) -> None:
        if not self.clock_ok:
            raise Unsupported(f"{self.name}'s clock is not wired (add_node(wrong_clock=True))")
        atomic_write(str(self.clock_file), format_offset(offset_s).encode(), 0o644)

    # ---------------------------------------------------------------- camera

    def load_clip(self, frames: Path) -> None:
        if self.camera_dir is None:
            raise Unsupported(f"{self.name} has no replayed camera")
        files = sorted(p for p in Path(frames).iterdir() if p.is_file())
        if not files:
            raise RigFault(f"no frames in {frames}")
        self.camera_dir.mkdir(parents=True, exist_ok=True)
        old = {p.name for p in self.camera_dir.iterdir()}
        self.frames = {p.name: p.read_bytes() for p in files}
        self._write_frames(self.frames)
        for name in old - set(self.frames):
            (self.camera_dir / name).unlink(missing_ok=True)

    def _write_frames(self, frames: dict[str, bytes]) -> None:
        if self.camera_dir is None:
            raise Unsupported(f"{self.name} has no replayed camera")
        for name, data in frames.items():
            atomic_write(str(self.camera_dir / name), data, 0o644)

    def camera(self, action: str, frames: Path | None) -> None:
        if self.camera_dir is None or not self.frames:
            raise Unsupported(f"{self.name} has no replayed camera")
        names = sorted(self.frames)
        if action == "clip" and frames is not None:
            self.load_clip(frames)
        elif action == "freeze":
            still = self.frames[names[0]]
            self._write_frames(dict.fromkeys(names, still))
        elif action == "cover":
            self._write_frames(dict(zip(names, covered_frames(len(names)), strict=True)))
        elif action == "restore":
            self._write_frames(self.frames)
        else:
            raise RigFault(f"unknown camera action {action!r}")

    # ---------------------------------------------------------------- state

    def read_state(self, relpath: str) -> bytes | None:
        path = self.state_dir / relpath
        try:
            return path.read_bytes()
        except FileNotFoundError:
            return None
