"""The VM rig: the rig interface (``hil_tests/rig.py``) over booted Debian 12 machines.

A box is a VM booted from the camfleet disk (``vm_image``: A/B slots, GRUB, RAUC) with the
packages on a media disk; the server is another VM, or the same one in a second role
(``server_in_box``: the fleet server's packages beside the agent's). What each action is:

| action | how |
|---|---|
| power on, off, cut | qemu started; ``systemctl poweroff`` in the guest; qemu SIGKILLed |
| hang | ``systemctl kill -s SIGSTOP camfleet-agent`` (sockets kept, nothing done) |
| run, read_file | the QEMU guest agent (virtio serial): no network or password needed |
| logs | the serial console of the current boot and the agent's journal |

Network, disk, clock and camera faults are the virtual rig's (real processes) and the real
rig's: here they raise ``Unsupported``.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

from hil_tests import vm_fleet
from hil_tests.rig import CommandResult, FleetApi, Recorder, Rig, Unsupported
from hil_tests.vm_qemu import Vm, VmError

AGENT_UNIT = "camfleet-agent"
STATE_DIR = "/var/lib/camfleet-agent"


class GuestApi(FleetApi):
    """The server VM's REST API, called with curl inside it (its HTTPS, its fleet root)."""

    def __init__(self, server: vm_fleet.Server) -> None:
        self.server = server

    def get(self, path: str, token: str | None = None) -> tuple[int, Any]:
        return self.server.api("GET", path)

    def call(self, method: str, path: str, body: object = None,
             token: str | None = None) -> tuple[int, Any]:  # fmt: skip
        return self.server.api(method, path, body)


class VmRig(Rig):
    kind = "vm"
    features = frozenset({"systemd", "reboot", "rauc"})

    def __init__(self, recorder: Recorder | None = None) -> None:
        super().__init__(recorder)
        self.vms: dict[str, Vm] = {}
        self.server: vm_fleet.Server | None = None
        self.boot_timeout = 1200.0  # TCG on a loaded host: minutes

    def add(self, vm: Vm) -> str:
        self.vms[vm.name] = vm
        return vm.name

    @property
    def api(self) -> FleetApi:
        if self.server is None:
            raise Unsupported("no fleet server VM yet")
        return GuestApi(self.server)

    def box(
        self,
        label: str,
        *,
        frames: Path | None = None,
        extra: dict[str, object] | None = None,
        disk_bytes: int | None = None,
    ) -> str:
        if label not in self.vms:
            raise Unsupported(f"no VM {label!r}: add one with VmRig.add")
        return label

    def node(self, label: str, *, box: str | None = None, extra: dict[str, object] | None = None,
             wrong_clock: bool = False) -> str:  # fmt: skip
        raise Unsupported("cabinet nodes are MicroPython boards: the virtual rig runs them")

    def boot(self, device: str) -> float:
        """Power on and wait for the system (the serial console's ready line, then the guest
        agent): the seconds it took."""
        self.power_on(device)
        vm = self.vms[device]
        took = vm.wait_console("camfleet-vm ready", self.boot_timeout)
        took += vm.wait_agent(120)
        self.recorder.observe(device, "booted", f"{took:.0f} s ({vm.accel})")
        return took

    def _do_power(self, device: str, action: str) -> None:
        vm = self.vms[device]
        if action == "on":
            vm.start()
        elif action == "off":
            vm.shutdown()
        else:
            vm.cut()

    def _do_hang(self, device: str) -> None:
        self.vms[device].must(f"systemctl kill -s SIGSTOP {AGENT_UNIT}")

    def _do_run(self, device: str, argv: list[str], timeout: float) -> CommandResult:
        r = self.vms[device].exec(argv, timeout=timeout)
        return CommandResult(r.exitcode, r.stdout, r.stderr)

    def _do_logs(self, device: str) -> str:
        vm = self.vms[device]
        journal = ""
        if vm.running():
            try:
                journal = vm.sh(f"journalctl -u {AGENT_UNIT} --no-pager -n 100").stdout
            except VmError as exc:
                journal = str(exc)
        return vm.console()[-8000:] + "\n--- journal ---\n" + journal

    def _do_read(self, device: str, relpath: str) -> bytes | None:
        r = self.vms[device].exec(["/bin/sh", "-c", f"base64 -w0 {STATE_DIR}/{relpath}"])
        return base64.b64decode(r.stdout) if r.exitcode == 0 else None

    def _do_net(self, device: str, action: str, value: float) -> None:
        raise Unsupported("network faults: the virtual rig (proxy) and real rig (netem)")

    def _do_disk(self, device: str, free_bytes: int | None) -> None:
        raise Unsupported("disk faults: the virtual and real rigs")

    def _do_clock(self, device: str, offset_s: float) -> None:
        raise Unsupported("clock faults: the virtual and real rigs")

    def _do_camera(self, device: str, action: str, frames: Path | None) -> None:
        raise Unsupported("camera faults: the virtual and real rigs")

    def close(self) -> None:
        for vm in self.vms.values():
            vm.cut()
