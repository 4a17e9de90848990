"""Scenarios on booted Debian 12 virtual machines (the VM rig, docs/hil.md): the packages
of `make packages` installed offline, the systemd units, the watchdog, reboots, power cuts.

Long (minutes: a boot under TCG takes one to several): `make hil` only. They need root
(debootstrap, once) and the host tools `vm_image.missing_tools` names; they are skipped
with the reason otherwise. The image is cached in build/vm (make vm-image).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hil_tests import vm_fleet, vm_image
from hil_tests.procs import wait_until
from hil_tests.rig import Recorder
from hil_tests.vm_qemu import Vm, accel
from hil_tests.vm_rig import AGENT_UNIT, VmRig

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ROOT / "build" / "packages"
pytestmark = [pytest.mark.hil_long, pytest.mark.timeout(4 * 3600)]  # TCG: hours


def _debs() -> list[Path]:
    names = ["camfleet-server_*_amd64.deb", "camfleet-agent_*_amd64.deb", "camfleet-model-*.deb"]
    found = [sorted(PACKAGES.glob(n)) for n in names]
    if not all(found):
        pytest.skip(f"no packages in {PACKAGES}: run `make packages`")
    return [f[-1] for f in found]


def _frames(folder: Path) -> Path:
    """A replayed camera: real photos (scikit-image's) as PNG files."""
    from tests.detection_helpers import photo, write_png

    folder.mkdir(parents=True, exist_ok=True)
    for name in ("astronaut", "coffee", "chelsea"):
        write_png(folder / f"{name}.png", photo(name))
    return folder


@pytest.fixture(scope="module")
def built() -> vm_image.Built:
    if os.geteuid() != 0:
        pytest.skip("the VM image is built as root (debootstrap)")
    need = vm_image.missing_tools()
    if need:
        pytest.skip("apt install " + " ".join(need))
    return vm_image.build()


@pytest.fixture(scope="module")
def vmrig(hil_recorder: Recorder) -> Iterator[VmRig]:
    made = VmRig(hil_recorder)
    try:
        yield made
    finally:
        made.close()


def test_box_and_server_install_offline_enroll_and_the_watchdog_restarts_a_hung_agent(
    built: vm_image.Built, vmrig: VmRig, tmp_path: Path
) -> None:
    """A booted Debian 12 VM with no network card installs the server, agent and model
    packages from a media disk, serves HTTPS, enrolls the box with a one-time token and
    stores its heartbeats; a hung agent (SIGSTOP) is killed by the systemd watchdog and
    restarted; a clean reboot and a power cut each bring the agent back reporting."""
    debs = _debs()
    files = [*debs, *sorted(_frames(tmp_path / "frames").iterdir())]
    media = vm_image.media(files, tmp_path / "media.ext4")
    vm = Vm("box-1", built.disk, tmp_path / "vm", media=media, memory_mib=3072)
    vm.fresh()
    rig = vmrig
    rig.recorder.start("vm: install, enroll, watchdog, reboot, power cut", "vm",
                       "packages installed offline on a booted VM; the box reports; "
                       "systemd brings a hung or cut agent back")  # fmt: skip
    rig.add(vm)
    mode, why = accel()
    rig.recorder.note(f"accelerator: {mode} ({why})")
    boot_s = rig.boot("box-1")
    rig.recorder.note(f"boot_s {boot_s:.0f}")
    routes = vm_fleet.no_network(vm)
    assert "default" not in routes, routes  # nothing to download from
    on_media = vm_fleet.mount_media(vm)
    assert {d.name for d in debs} <= set(on_media)
    install_s = vm_fleet.install(vm, [d.name for d in debs])
    rig.recorder.note(f"install_s {install_s:.0f} (server, agent, model packages)")
    assert vm.must("dpkg-query -W -f '${Status}' camfleet-agent") == "install ok installed"
    # the agent is enabled and waits for its certificate (ConditionPathExists)
    assert vm.must(f"systemctl is-enabled {AGENT_UNIT}").strip() == "enabled"
    vm.must("mkdir -p /srv/frames && cp /media/camfleet/*.png /srv/frames/")

    server = vm_fleet.server_setup(vm)
    rig.server = server
    for unit in ("camfleet-broker", "camfleet-server", "camfleet-est", "camfleet-ingest@1"):
        assert vm_fleet.unit_state(vm, unit)["ActiveState"] == "active", unit
    # HTTPS only: plain HTTP on the API port gets no answer
    assert vm.sh("curl -s --max-time 5 http://camfleet-vm:443/healthz").exitcode != 0

    provision_s = vm_fleet.provision_box(server, vm, "cam-vm-01", "/srv/frames")
    rig.recorder.note(f"box_install_s {install_s + provision_s:.0f} (install + provision to "
                      f"first heartbeat; provision {provision_s:.0f})")  # fmt: skip
    dev = vm_fleet.device(server, "cam-vm-01")
    assert dev["last_seen"], dev
    agent = vm_fleet.unit_state(vm, AGENT_UNIT)
    assert agent["ActiveState"] == "active" and agent["WatchdogUSec"] != "0", agent
    rig.recorder.check("enrolled and reporting", str(dev.get("versions")))

    # a hung agent: the watchdog (WatchdogSec=60) kills it, Restart=always starts it again
    pid, restarts = agent["MainPID"], int(agent["NRestarts"])
    rig.hang("box-1")
    assert vm_fleet.unit_state(vm, AGENT_UNIT)["MainPID"] == pid  # stopped, not gone

    def restarted() -> bool:
        st = vm_fleet.unit_state(vm, AGENT_UNIT)
        return (int(st["NRestarts"]) > restarts and st["MainPID"] not in ("0", pid)
                and st["ActiveState"] == "active")  # fmt: skip

    recover_s = wait_until(restarted, 600, "the watchdog restart", interval=5)
    journal = vm.must(f"journalctl -u {AGENT_UNIT} --no-pager -o cat")
    assert "Watchdog timeout" in journal, journal[-3000:]
    rig.recorder.figures(recover_s=recover_s)
    rig.recorder.check("watchdog restart", f"{recover_s:.0f} s after SIGSTOP")
    _reports_again(server, "cam-vm-01", after=time.time())

    rig.power_off("box-1")
    rig.boot("box-1")
    _reports_again(server, "cam-vm-01", after=time.time())
    rig.recorder.check("clean reboot: reporting again")
    rig.power_cut("box-1")
    rig.boot("box-1")
    _reports_again(server, "cam-vm-01", after=time.time())
    rig.recorder.check("power cut: reporting again")
    rig.recorder.end("passed")


def _reports_again(server: vm_fleet.Server, device_id: str, after: float) -> None:
    """A heartbeat stored after ``after`` (the guest's clock is the host's: -rtc base=utc)."""
    from datetime import datetime

    def fresh() -> bool:
        seen = vm_fleet.device(server, device_id).get("last_seen")
        return bool(seen) and datetime.fromisoformat(str(seen)).timestamp() > after

    wait_until(fresh, 900, f"a heartbeat of {device_id}", interval=5)


def _slot(vm: Vm) -> str:
    return vm.must("tr ' ' '\\n' </proc/cmdline | sed -n 's/^rauc.slot=//p'").strip()


def _grubenv(vm: Vm) -> dict[str, str]:
    out = vm.must("grub-editenv /boot/efi/EFI/BOOT/grubenv list")
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def test_rauc_installs_into_the_other_slot_survives_a_power_cut_and_falls_back(
    built: vm_image.Built, vmrig: VmRig, tmp_path: Path
) -> None:
    """RAUC on the A/B disk: a power cut while a bundle is written boots the old slot,
    whole; a complete install boots the new slot, whose health check commits it; a bundle
    whose image fails its health check boots once, is marked bad and the machine falls back
    to the good slot by itself."""
    out = built.disk.parent
    good = vm_image.bundle(out, "2")
    bad = vm_image.bundle(out, "3", healthy=False)
    media = vm_image.media([good, bad], tmp_path / "media.ext4")
    # the disk writes at 16 MiB/s: the 2 GiB slot takes minutes to write, time to cut power
    vm = Vm("box-rauc", built.disk, tmp_path / "vm", media=media, write_bps=16 << 20)
    vm.fresh()
    rig = vmrig
    rig.recorder.start(
        "vm: RAUC A/B, power cut mid-install, health-gated commit, fallback",
        "vm",
        "the box boots a whole, committed root file system each time",
    )
    rig.add(vm)
    rig.boot(vm.name)
    vm.wait_console("slot A marked good", 300)
    assert _slot(vm) == "A"
    vm_fleet.mount_media(vm)

    # 1. the plug pulled while RAUC writes slot B
    vm.exec(["rauc", "install", f"{vm_fleet.MEDIA}/{good.name}"], wait=False)
    journal = "journalctl -u rauc --no-pager -o cat"
    wait_until(lambda: "writing data to device" in vm.sh(journal).stdout, 900,
               "RAUC writing slot B", interval=1)  # fmt: skip
    time.sleep(10)
    op = "busctl get-property de.pengutronix.rauc / de.pengutronix.rauc.Installer Operation"
    assert "installing" in vm.sh(op).stdout  # still writing when the plug is pulled
    rig.recorder.observe(vm.name, "rauc writing slot B", vm.sh(op).stdout.strip())
    rig.power_cut(vm.name)
    rig.boot(vm.name)
    assert _slot(vm) == "A" and "image=1" in vm.console()
    rig.recorder.check("power cut during install: slot A, image 1", str(_grubenv(vm)))

    # 2. a complete install, a reboot into B, committed by its health check
    vm_fleet.mount_media(vm)
    t0 = time.monotonic()
    vm.must(f"rauc install {vm_fleet.MEDIA}/{good.name}", timeout=3600)
    install_s = time.monotonic() - t0
    rig.recorder.note(f"rauc_install_s {install_s:.0f} ({good.stat().st_size >> 20} MiB bundle)")
    env = _grubenv(vm)
    assert env["ORDER"].split()[0] == "B" and env["B_OK"] == "1", env
    rig.power_off(vm.name)
    rig.boot(vm.name)
    vm.wait_console("slot B marked good", 300)
    assert _slot(vm) == "B" and "image=2" in vm.console()
    assert _grubenv(vm)["B_TRY"] == "0"
    rig.recorder.check("installed, rebooted into B, committed")

    # 3. a bad image: one trial boot, marked bad, back to B by itself
    vm_fleet.mount_media(vm)
    vm.must(f"rauc install {vm_fleet.MEDIA}/{bad.name}", timeout=3600)
    rig.power_off(vm.name)
    rig.power_on(vm.name)
    vm.wait_console("health check failed", rig.boot_timeout)
    vm.wait_console("camfleet: slot B marked good", rig.boot_timeout)
    vm.wait_agent(120)
    console = vm.console()
    assert console.index("health check failed") < console.index("slot B marked good")
    assert _slot(vm) == "B"
    env = _grubenv(vm)
    assert env["A_OK"] == "0" and env["B_OK"] == "1", env
    rig.recorder.check("bad image fell back to B", str(env))
    rig.recorder.end("passed")
