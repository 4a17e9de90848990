"""The VM disk's design (hil_tests/vm_layout.py), checked without booting anything: the
partition table as sgdisk writes it, the GRUB script's syntax and its slot choice, RAUC's
config. The booted machines are tests/hil/test_vm.py (make hil)."""

from __future__ import annotations

import configparser
import itertools
import shutil
import subprocess
from pathlib import Path

import pytest

from hil_tests import vm_layout as lay


def test_partitions_are_aligned_contiguous_and_fit_the_disk() -> None:
    parts = lay.layout()
    assert [p.label for p in parts] == ["esp", "rootfs-a", "rootfs-b", "data"]
    assert parts[0].start_mib == 1
    for a, b in itertools.pairwise(parts):
        assert a.end_sector + 1 == b.start_sector  # no gap, no overlap
    assert all(p.start_sector % 2048 == 0 for p in parts)  # 1 MiB aligned
    assert parts[1].size_mib == parts[2].size_mib  # either slot holds the same image
    # the backup GPT (33 sectors) fits after the last partition
    assert (lay.disk_mib(parts) * lay.MIB) // lay.SECTOR - 1 - parts[-1].end_sector >= 33


@pytest.mark.skipif(shutil.which("sgdisk") is None, reason="apt install gdisk")
def test_sgdisk_writes_the_table_with_partition_labels(tmp_path: Path) -> None:
    parts = lay.layout()
    disk = tmp_path / "disk.raw"
    with disk.open("wb") as f:
        f.truncate(lay.disk_mib(parts) * lay.MIB)
    subprocess.run(["sgdisk", *lay.sgdisk_args(parts), str(disk)], check=True,
                   capture_output=True)  # fmt: skip
    table = subprocess.run(["sgdisk", "-p", str(disk)], check=True, capture_output=True,
                           text=True).stdout  # fmt: skip
    rows = [line.split() for line in table.splitlines() if line.strip()[:1].isdigit()]
    assert [(int(r[0]), int(r[1]), int(r[2]), r[5], r[-1]) for r in rows] == [
        (p.number, p.start_sector, p.end_sector, p.type_code.upper(), p.label) for p in parts
    ]


@pytest.mark.skipif(shutil.which("grub-script-check") is None, reason="apt install grub-common")
def test_grub_script_parses(tmp_path: Path) -> None:
    (tmp_path / "grub.cfg").write_text(lay.grub_cfg())
    (tmp_path / "embedded.cfg").write_text(lay.GRUB_EMBEDDED)
    for name in ("grub.cfg", "embedded.cfg"):
        subprocess.run(["grub-script-check", str(tmp_path / name)], check=True)


def choose(env: dict[str, str]) -> tuple[str, dict[str, str]]:
    """What the GRUB script does with grubenv (read from its text: the first slot of ORDER
    that is OK and not on trial, its TRY set; none: A)."""
    cfg = lay.grub_cfg()
    assert "for s in $ORDER; do" in cfg and "save_env" in cfg
    env = dict(env)
    for slot in env["ORDER"].split():
        cond = f'if [ "$s" = {slot} -a "${slot}_OK" = 1 -a "${slot}_TRY" = 0 ]; then'
        assert cond in cfg
        if env[f"{slot}_OK"] == "1" and env[f"{slot}_TRY"] == "0":
            env[f"{slot}_TRY"] = "1"
            return slot, env
    return "A", env


def test_a_new_slot_gets_one_trial_and_the_machine_falls_back_by_itself() -> None:
    env = lay.grubenv_initial()
    slot, env = choose(env)
    assert slot == "A"
    env["A_TRY"] = "0"  # the health check passed: rauc status mark-good
    # RAUC installed B: B first, good, not tried
    env.update(ORDER="B A", B_OK="1", B_TRY="0")
    slot, env = choose(env)
    assert slot == "B"
    # B hung or failed its check before mark-good: the next boot skips it
    slot, env = choose(env)
    assert slot == "A"
    # B committed instead: it boots again and again while each boot is marked good
    env.update(B_TRY="0", A_TRY="0")
    assert choose(env)[0] == "B"


def test_rauc_config_names_both_slots_by_partition_label() -> None:
    conf = configparser.ConfigParser()
    conf.read_string(lay.rauc_system_conf())
    assert conf["system"]["bootloader"] == "grub"
    assert conf["system"]["compatible"] == lay.COMPATIBLE
    assert conf["system"]["grubenv"].startswith("/boot/efi/")  # the ESP, as fstab mounts it
    assert "/boot/efi" in lay.fstab() and "PARTLABEL=data /data" in lay.fstab()
    slots = {
        conf[s]["bootname"]: conf[s]["device"] for s in conf.sections() if s.startswith("slot.")
    }
    assert slots == {"A": "/dev/disk/by-partlabel/rootfs-a", "B": "/dev/disk/by-partlabel/rootfs-b"}
    # the kernel line names the same slot for RAUC (rauc.slot=) and the root it mounts
    cfg = lay.grub_cfg()
    assert "root=PARTLABEL=rootfs-a rw rauc.slot=A" in cfg
    assert "root=PARTLABEL=rootfs-b rw rauc.slot=B" in cfg
