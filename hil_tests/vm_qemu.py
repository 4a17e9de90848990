"""One virtual machine: qemu (KVM where /dev/kvm works, TCG otherwise, slower), UEFI
firmware (OVMF), a copy-on-write overlay of the camfleet disk, an optional media disk, the
serial console into a file the rig reads, and the QEMU guest agent (virtio serial) through
which the rig runs commands in the guest: no network, no password, no SSH needed.

Power: ``start`` (power on), ``shutdown`` (clean: systemctl poweroff in the guest),
``cut`` (SIGKILL to qemu: the plug pulled; the overlay keeps what reached the disk).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hil_tests import vm_image


class VmError(Exception):
    """The VM did not start, boot or answer in time."""


def accel() -> tuple[str, str]:
    """``kvm`` or ``tcg`` and why. KVM needs /dev/kvm and a hardware (VMX/SVM) module behind it:
    a host whose KVM is kvm-pvm only (a nested cloud VM with PVM) runs only guests with a
    PVM-enabled kernel, which Debian's is not (its boot stops with "KVM internal error"), so
    there the VM runs under TCG: the same machine, emulated, several times slower.
    ``CAMFLEET_VM_ACCEL=kvm|tcg`` overrides."""
    forced = os.environ.get("CAMFLEET_VM_ACCEL", "")
    if forced in ("kvm", "tcg"):
        return forced, "CAMFLEET_VM_ACCEL"
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "tcg", "no usable /dev/kvm"
    modules = Path("/sys/module")
    if (modules / "kvm_intel").exists() or (modules / "kvm_amd").exists():
        return "kvm", "/dev/kvm (kvm_intel/kvm_amd)"
    if (modules / "kvm_pvm").exists():
        return "tcg", "/dev/kvm is kvm-pvm: Debian's kernel cannot boot under it"
    return "kvm", "/dev/kvm"


@dataclass(frozen=True)
class GuestResult:
    exitcode: int
    stdout: str
    stderr: str


@dataclass
class Vm:
    name: str
    disk: Path  # the raw camfleet disk (read-only base of the overlay)
    work: Path  # this VM's overlay, serial log, sockets
    media: Path | None = None
    memory_mib: int = 2048
    cpus: int = 2
    netdev: list[str] = field(default_factory=list)  # qemu -netdev/-device args, none: no NIC
    proc: subprocess.Popen[bytes] | None = None
    accel: str = ""
    boot_offset: int = 0
    write_bps: int = 0  # the disk's write rate limit (0: none): a window to cut power in

    @property
    def overlay(self) -> Path:
        return self.work / f"{self.name}.qcow2"

    @property
    def serial_log(self) -> Path:
        return self.work / f"{self.name}.serial.log"

    @property
    def qga_path(self) -> Path:
        return self.work / f"{self.name}.qga"

    def fresh(self) -> None:
        """A new machine: the overlay made again over the base disk."""
        self.work.mkdir(parents=True, exist_ok=True)
        self.overlay.unlink(missing_ok=True)
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b",
                        str(self.disk), str(self.overlay)], check=True)  # fmt: skip

    def argv(self) -> list[str]:
        self.accel = accel()[0]
        args = [
            "qemu-system-x86_64", "-name", self.name, "-machine", "q35",
            "-accel", "kvm" if self.accel == "kvm" else "tcg,thread=multi,tb-size=256",
            "-cpu", "host" if self.accel == "kvm" else "max", "-smp", str(self.cpus),
            "-m", str(self.memory_mib), "-bios", str(vm_image.OVMF),
            "-display", "none", "-monitor", "none", "-rtc", "base=utc",
            "-chardev", f"file,id=ser0,path={self.serial_log},append=on", "-serial", "chardev:ser0",
            "-drive", f"file={self.overlay},format=qcow2,if=virtio,cache=unsafe"
            + (f",throttling.bps-write={self.write_bps}" if self.write_bps else ""),
            "-chardev", f"socket,path={self.qga_path},server=on,wait=off,id=qga0",
            "-device", "virtio-serial", "-device",
            "virtserialport,chardev=qga0,name=org.qemu.guest_agent.0",
        ]  # fmt: skip
        if self.media is not None:
            args += ["-drive", f"file={self.media},format=raw,if=virtio,readonly=on"]
        args += self.netdev or ["-nic", "none"]
        return args

    def start(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            raise VmError(f"{self.name} is running")
        if not self.overlay.is_file():
            self.fresh()
        self.qga_path.unlink(missing_ok=True)
        with self.serial_log.open("ab") as f:
            f.write(f"\n=== power on {time.strftime('%H:%M:%S')} ===\n".encode())
            self.boot_offset = f.tell()  # console() shows this boot only
        log = (self.work / f"{self.name}.qemu.log").open("ab")
        self.proc = subprocess.Popen(self.argv(), stdout=log, stderr=log,
                                     stdin=subprocess.DEVNULL)  # fmt: skip
        log.close()

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def cut(self) -> None:
        """The plug pulled: qemu killed, nothing flushed by the guest."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None

    def shutdown(self, timeout: float = 90.0) -> None:
        if not self.running():
            return
        with contextlib.suppress(VmError):  # it may be going down already
            self.exec(["systemctl", "poweroff"], timeout=10, wait=False)
        assert self.proc is not None
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.cut()
        self.proc = None

    def console(self, all_boots: bool = False) -> str:
        try:
            with self.serial_log.open("rb") as f:
                f.seek(0 if all_boots else self.boot_offset)
                return f.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_console(self, text: str, timeout: float) -> float:
        """Seconds until ``text`` shows on the serial console of this boot."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if text in self.console():
                return time.monotonic() - t0
            if not self.running():
                raise VmError(f"{self.name} stopped before {text!r}:\n{self.console()[-3000:]}")
            time.sleep(0.2)
        raise VmError(f"{self.name}: no {text!r} in {timeout:.0f}s:\n{self.console()[-3000:]}")

    # ------------------------------------------------------------- guest agent
    def _qga(self, command: str, arguments: dict[str, Any] | None = None,
             timeout: float = 10.0) -> Any:  # fmt: skip
        msg: dict[str, Any] = {"execute": command}
        if arguments is not None:
            msg["arguments"] = arguments
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(timeout)
                s.connect(str(self.qga_path))
                token = int(time.time() * 1000) % 2_000_000_000
                # sync first: a reply left over from an earlier client is skipped
                s.sendall(json.dumps({"execute": "guest-sync", "arguments": {"id": token}})
                          .encode() + b"\n")  # fmt: skip
                f = s.makefile("rb")
                while True:
                    line = f.readline()
                    if not line:
                        raise VmError("guest agent closed the connection")
                    if json.loads(line).get("return") == token:
                        break
                s.sendall(json.dumps(msg).encode() + b"\n")
                reply = json.loads(f.readline() or b"{}")
        except (OSError, ValueError) as exc:
            raise VmError(f"guest agent of {self.name}: {exc}") from exc
        if "error" in reply:
            raise VmError(f"guest agent {command}: {reply['error'].get('desc')}")
        return reply.get("return")

    def agent_up(self) -> bool:
        try:
            self._qga("guest-ping", timeout=2)
            return True
        except VmError:
            return False

    def wait_agent(self, timeout: float) -> float:
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if self.agent_up():
                return time.monotonic() - t0
            if not self.running():
                raise VmError(f"{self.name} stopped:\n{self.console()[-3000:]}")
            time.sleep(0.5)
        raise VmError(f"{self.name}: guest agent silent for {timeout:.0f}s:\n"
                      f"{self.console()[-3000:]}")  # fmt: skip

    def exec(self, argv: list[str], timeout: float = 600.0, wait: bool = True,
             stdin: bytes | None = None) -> GuestResult:  # fmt: skip
        args: dict[str, Any] = {"path": argv[0], "arg": argv[1:], "capture-output": True}
        if stdin is not None:
            args["input-data"] = base64.b64encode(stdin).decode()
        pid = self._qga("guest-exec", args)["pid"]
        if not wait:
            return GuestResult(0, "", "")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            st = self._qga("guest-exec-status", {"pid": pid})
            if st.get("exited"):
                return GuestResult(
                    int(st.get("exitcode", st.get("signal", -1) and 128 + st.get("signal", 0))),
                    base64.b64decode(st.get("out-data", "")).decode(errors="replace"),
                    base64.b64decode(st.get("err-data", "")).decode(errors="replace"),
                )
            time.sleep(0.2)
        raise VmError(f"{self.name}: {' '.join(argv)[:100]} still running after {timeout:.0f}s")

    def sh(self, script: str, timeout: float = 600.0) -> GuestResult:
        return self.exec(["/bin/sh", "-c", script], timeout=timeout)

    def must(self, script: str, timeout: float = 600.0) -> str:
        r = self.sh(script, timeout)
        if r.exitcode != 0:
            raise VmError(f"{self.name}: `{script[:200]}` exit {r.exitcode}:\n{r.stdout[-2000:]}"
                          f"\n{r.stderr[-2000:]}")  # fmt: skip
        return r.stdout

    def write(self, path: str, data: bytes, mode: str = "0644") -> None:
        self.exec(["/bin/sh", "-c", f"cat > {path}.tmp && chmod {mode} {path}.tmp && "
                   f"mv {path}.tmp {path}"], stdin=data)  # fmt: skip

    def read(self, path: str) -> bytes | None:
        r = self.exec(["/bin/sh", "-c", f"test -e {path} && base64 -w0 {path}"])
        return base64.b64decode(r.stdout) if r.exitcode == 0 else None
