"""What a camfleet VM disk is made of, as data: the A/B partition layout, the GRUB script
that picks a slot, RAUC's system config, the guest's fstab and units. No I/O here
(``vm_image`` writes these into an image; tests/test_vm_layout.py checks them).

The disk (GPT, like a box's SD card or SSD):

| # | label | holds |
|---|---|---|
| 1 | ``esp`` | FAT: GRUB (EFI), its ``grub.cfg`` and ``grubenv`` (RAUC's slot state) |
| 2 | ``rootfs-a`` | ext4: Debian 12 with the kernel (slot A, bootname A) |
| 3 | ``rootfs-b`` | ext4: slot B, empty until RAUC installs a bundle there |
| 4 | ``data`` | ext4: what outlives a slot switch (RAUC's status, the agent's state) |

GRUB boots the first slot of ``ORDER`` that is good (``X_OK=1``) and not on trial
(``X_TRY=0``), setting its ``X_TRY=1`` before it boots it. A booted system that passes its
health check runs ``rauc status mark-good`` (``X_TRY=0``): a slot that does not, because it
hangs, panics or fails its check, is skipped on the next boot and the machine falls back by
itself. RAUC's grub backend writes the same variables (``ORDER``, ``X_OK``, ``X_TRY``).
"""

from __future__ import annotations

from dataclasses import dataclass

MIB = 1024 * 1024
SECTOR = 512
SLOTS = ("A", "B")
COMPATIBLE = "camfleet-vm-amd64"
ESP_LABEL = "CFESP"  # the FAT label GRUB searches for
MEDIA_LABEL = "CFMEDIA"  # the second disk: packages and bundles, like a USB stick
# the guest's packages (Debian 12): the box's and the server's Depends, RAUC, the guest agent
# the rig drives it through, GRUB's tools for RAUC's grub backend
GUEST_PACKAGES = (
    "linux-image-amd64", "initramfs-tools", "systemd-sysv", "udev", "dbus", "kmod", "procps",
    "iproute2", "util-linux", "passwd", "e2fsprogs", "python3", "python3-venv", "mosquitto",
    "libssl3", "openssl", "ca-certificates", "zstd", "curl", "rauc", "rauc-service", "grub-common",
    "qemu-guest-agent",
)  # fmt: skip


@dataclass(frozen=True)
class Partition:
    number: int
    label: str
    start_mib: int
    size_mib: int
    type_code: str  # sgdisk's: ef00 EFI system, 8300 Linux

    @property
    def start_sector(self) -> int:
        return self.start_mib * MIB // SECTOR

    @property
    def end_sector(self) -> int:  # inclusive, as sgdisk takes it
        return (self.start_mib + self.size_mib) * MIB // SECTOR - 1


def layout(esp_mib: int = 64, slot_mib: int = 2048, data_mib: int = 1024) -> list[Partition]:
    """The four partitions, 1 MiB aligned, after the 1 MiB GPT head."""
    parts: list[Partition] = []
    start = 1
    for number, (label, size, code) in enumerate(
        (
            ("esp", esp_mib, "ef00"),
            ("rootfs-a", slot_mib, "8300"),
            ("rootfs-b", slot_mib, "8300"),
            ("data", data_mib, "8300"),
        ),
        start=1,
    ):
        parts.append(Partition(number, label, start, size, code))
        start += size
    return parts


def disk_mib(parts: list[Partition]) -> int:
    """The disk's size: the partitions and 1 MiB for the backup GPT at the end."""
    return parts[-1].start_mib + parts[-1].size_mib + 1


def sgdisk_args(parts: list[Partition]) -> list[str]:
    args = ["--clear"]
    for p in parts:
        args += [
            f"--new={p.number}:{p.start_sector}:{p.end_sector}",
            f"--typecode={p.number}:{p.type_code}",
            f"--change-name={p.number}:{p.label}",
        ]
    return args


def grubenv_initial() -> dict[str, str]:
    """A new disk: slot A good, slot B empty."""
    return {"ORDER": "A B", "A_OK": "1", "A_TRY": "0", "B_OK": "0", "B_TRY": "0"}


def grub_cfg(kernel_args: str = "console=ttyS0,115200 quiet") -> str:
    """The GRUB script on the ESP: choose the slot, count the trial, boot."""
    lines = [
        "set timeout=0",
        "serial --unit=0 --speed=115200",
        "terminal_input serial console",
        "terminal_output serial console",
        "search --no-floppy --label --set=esp " + ESP_LABEL,
        'set ORDER="A B"',
        *[f"set {s}_OK=0\nset {s}_TRY=0" for s in SLOTS],
        "load_env -f ($esp)/EFI/BOOT/grubenv",
        "set slot=none",
        "for s in $ORDER; do",
        '  if [ "$slot" = none ]; then',
    ]
    for s in SLOTS:
        lines += [
            f'    if [ "$s" = {s} -a "${s}_OK" = 1 -a "${s}_TRY" = 0 ]; then',
            f"      set slot={s}",
            f"      set {s}_TRY=1",
            "    fi",
        ]
    lines += [
        "  fi",
        "done",
        'if [ "$slot" = none ]; then',
        "  # nothing good and untried: every slot had its trial; boot A and count no trial",
        "  set slot=A",
        "fi",
        "save_env -f ($esp)/EFI/BOOT/grubenv ORDER A_OK A_TRY B_OK B_TRY",
        'echo "camfleet: booting slot $slot"',
    ]
    for index, s in enumerate(SLOTS):
        part = 2 + index
        lines += [
            f'if [ "$slot" = {s} ]; then',
            f"  linux (hd0,gpt{part})/vmlinuz root=PARTLABEL=rootfs-{s.lower()} rw"
            f" rauc.slot={s} {kernel_args}",
            f"  initrd (hd0,gpt{part})/initrd.img",
            "  boot",
            "fi",
        ]
    return "\n".join(lines) + "\n"


GRUB_EMBEDDED = (
    f"search --no-floppy --label --set=root {ESP_LABEL}\nconfigfile ($root)/EFI/BOOT/grub.cfg\n"
)
# the modules the standalone EFI GRUB needs for the script above
GRUB_MODULES = (
    "part_gpt fat ext2 normal configfile linux echo test loadenv search search_label serial"
    " terminal boot gzio"
)


def rauc_system_conf() -> str:
    return "\n".join([
        "[system]",
        f"compatible={COMPATIBLE}",
        "bootloader=grub",
        "grubenv=/boot/efi/EFI/BOOT/grubenv",
        "statusfile=/data/rauc.status",
        "",
        "[keyring]",
        "path=/etc/rauc/keyring.pem",
        "",
        *[f"[slot.rootfs.{i}]\ndevice=/dev/disk/by-partlabel/rootfs-{s.lower()}\n"
          f"type=ext4\nbootname={s}\n" for i, s in enumerate(SLOTS)],
    ])  # fmt: skip


def rauc_manifest(version: str) -> str:
    """A rootfs bundle's manifest: one ext4 image for the rootfs slot class."""
    return (
        f"[update]\ncompatible={COMPATIBLE}\nversion={version}\n\n"
        "[image.rootfs]\nfilename=rootfs.ext4\n"
    )


def fstab() -> str:
    return (
        "PARTLABEL=esp /boot/efi vfat umask=0077,nofail 0 2\n"
        "PARTLABEL=data /data ext4 defaults,nofail 0 2\n"
    )


# Every boot: the health check of the booted slot. It passes when the image's own check
# (/usr/lib/camfleet-vm/health, a file a bad image lacks or fails) exits 0; then the slot is
# marked good. Otherwise it is marked bad and the machine reboots: GRUB picks the other slot.
HEALTH_UNIT = """\
[Unit]
Description=camfleet VM: health-gated commit of the booted RAUC slot
After=multi-user.target rauc.service
Requires=rauc.service

[Service]
Type=oneshot
ExecStart=/usr/lib/camfleet-vm/commit

[Install]
WantedBy=multi-user.target
"""

COMMIT_SCRIPT = """\
#!/bin/sh
# the booted slot's health check decides: mark it good, or bad and reboot (the other slot)
if /usr/lib/camfleet-vm/health; then
  slot=$(tr ' ' '\\n' </proc/cmdline | sed -n 's/^rauc.slot=//p')
  rauc status mark-good && echo "camfleet: slot $slot marked good" >/dev/ttyS0
else
  echo "camfleet: health check failed, falling back" >/dev/ttyS0
  rauc status mark-bad
  systemctl reboot
fi
"""

HEALTH_OK = "#!/bin/sh\n# a good image: the system came up to multi-user\nexit 0\n"
HEALTH_BAD = "#!/bin/sh\n# a bad image, for the fallback scenario: never healthy\nexit 1\n"

# the marker the rig waits for on the serial console: the system is up, which slot, which image
READY_UNIT = """\
[Unit]
Description=camfleet VM: say on the serial console that the system is up
After=multi-user.target

[Service]
Type=oneshot
ExecStart=/usr/lib/camfleet-vm/ready

[Install]
WantedBy=multi-user.target
"""

READY_SCRIPT = """\
#!/bin/sh
slot=$(tr ' ' '\\n' </proc/cmdline | sed -n 's/^rauc.slot=//p')
echo "camfleet-vm ready slot=$slot image=$(cat /etc/camfleet-image)" >/dev/ttyS0
"""
