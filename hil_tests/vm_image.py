"""Build the camfleet VM's disk image: Debian 12 amd64 from Debian's own packages
(debootstrap), the A/B layout of ``vm_layout``, GRUB for EFI, RAUC; and the media disk that
carries packages and bundles into a VM that has no network.

    python -m hil_tests.vm_image [--out build/vm]      # make vm-image (root: debootstrap)

Cached under ``build/vm``: the debootstrapped tree (``base-<key>``, minutes, once per package
list) and the disk (``disk-<key>.raw``, seconds from the tree). A VM boots a copy-on-write
overlay of the disk, so every scenario starts from the same fresh machine.
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from hil_tests import vm_layout as lay

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "build" / "vm"
MIRROR = os.environ.get("CAMFLEET_DEBIAN_MIRROR", "http://deb.debian.org/debian")
SUITE = "bookworm"
HOST_TOOLS = {
    "debootstrap": "debootstrap", "sgdisk": "gdisk", "mkfs.vfat": "dosfstools",
    "mcopy": "mtools", "mkfs.ext4": "e2fsprogs", "grub-mkstandalone": "grub-efi-amd64-bin",
    "grub-editenv": "grub-common", "qemu-img": "qemu-utils",
    "qemu-system-x86_64": "qemu-system-x86", "rauc": "rauc", "openssl": "openssl",
}  # fmt: skip
OVMF = Path("/usr/share/ovmf/OVMF.fd")


class ImageError(Exception):
    """The image could not be built (a tool missing or failing)."""


def missing_tools() -> list[str]:
    """The Debian packages this host lacks to build and boot the VM (apt install them)."""
    need = {pkg for tool, pkg in HOST_TOOLS.items() if shutil.which(tool) is None}
    if not OVMF.is_file():
        need.add("ovmf")
    return sorted(need)


def base_key(packages: tuple[str, ...] = lay.GUEST_PACKAGES) -> str:
    return hashlib.sha256(f"{SUITE} {' '.join(sorted(packages))}".encode()).hexdigest()[:12]


def image_key(image: str, healthy: bool = True) -> str:
    """Names an image's files: the base, what is written into it (vm_layout and ``customise``,
    so a changed script makes a new image, never a stale one), the image's name."""
    made = Path(lay.__file__).read_bytes() + inspect.getsource(customise).encode()
    return f"{base_key()}-{hashlib.sha256(made).hexdigest()[:8]}-{image}" + (
        "" if healthy else "-bad"
    )


def _run(argv: list[str], **kw: object) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, check=False, **kw)  # type: ignore[call-overload]
    if done.returncode != 0:
        raise ImageError(f"{argv[0]} failed ({done.returncode}): {done.stderr[-2000:]}")
    return str(done.stdout)


def debootstrap(out: Path) -> Path:
    """Debian 12 with GUEST_PACKAGES in ``out/base-<key>`` (kept; made once)."""
    tree = out / f"base-{base_key()}"
    if (tree / ".complete").is_file():
        return tree
    if tree.exists():
        shutil.rmtree(tree)
    tree.parent.mkdir(parents=True, exist_ok=True)
    _run(["debootstrap", "--variant=minbase", "--include=" + ",".join(lay.GUEST_PACKAGES),
          SUITE, str(tree), MIRROR])  # fmt: skip
    (tree / ".complete").write_text(MIRROR + "\n")
    return tree


@dataclass(frozen=True)
class Keys:
    """RAUC's signing certificate and key (a test PKI made here) and its keyring."""

    cert: Path
    key: Path
    keyring: Path


def rauc_keys(out: Path) -> Keys:
    d = out / "rauc-keys"
    keys = Keys(d / "signing.pem", d / "signing.key", d / "keyring.pem")
    if keys.keyring.is_file():
        return keys
    d.mkdir(parents=True, exist_ok=True)
    _run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
          "-nodes", "-keyout", str(keys.key), "-out", str(keys.cert), "-days", "3650",
          "-subj", "/CN=camfleet VM rootfs signing"])  # fmt: skip
    shutil.copy(keys.cert, keys.keyring)
    return keys


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)


def _enable(tree: Path, unit: str, target: str = "multi-user.target") -> None:
    wants = tree / "etc/systemd/system" / f"{target}.wants"
    wants.mkdir(parents=True, exist_ok=True)
    link = wants / unit
    if not link.is_symlink():
        link.symlink_to(f"/etc/systemd/system/{unit}")


def customise(tree: Path, image: str, keys: Keys, healthy: bool = True) -> None:
    """What makes the debootstrapped tree a camfleet VM's root file system."""
    _write(tree / "etc/hostname", "camfleet-vm\n")
    _write(tree / "etc/hosts", "127.0.0.1 localhost camfleet-vm\n::1 localhost\n")
    _write(tree / "etc/fstab", lay.fstab())
    for d in ("boot/efi", "data"):
        (tree / d).mkdir(parents=True, exist_ok=True)
    _write(tree / "etc/camfleet-image", image + "\n")
    _write(tree / "etc/rauc/system.conf", lay.rauc_system_conf())
    shutil.copy(keys.keyring, tree / "etc/rauc/keyring.pem")
    lib = tree / "usr/lib/camfleet-vm"
    _write(lib / "commit", lay.COMMIT_SCRIPT, 0o755)
    _write(lib / "ready", lay.READY_SCRIPT, 0o755)
    _write(lib / "health", lay.HEALTH_OK if healthy else lay.HEALTH_BAD, 0o755)
    _write(tree / "etc/systemd/system/camfleet-vm-commit.service", lay.HEALTH_UNIT)
    _write(tree / "etc/systemd/system/camfleet-vm-ready.service", lay.READY_UNIT)
    _enable(tree, "camfleet-vm-commit.service")
    _enable(tree, "camfleet-vm-ready.service")
    # no network in the guest unless the rig gives it one (then: DHCP on every ethernet)
    _write(tree / "etc/systemd/network/50-dhcp.network",
           "[Match]\nName=en* eth*\n\n[Network]\nDHCP=ipv4\n")  # fmt: skip
    _enable(tree, "systemd-networkd.service")
    link = tree / "etc/systemd/system/multi-user.target.wants/systemd-networkd.service"
    link.unlink()
    link.symlink_to("/lib/systemd/system/systemd-networkd.service")
    # the root password is locked; the rig works through the guest agent (virtio serial)
    _write(tree / "etc/apt/apt.conf.d/99-offline", 'Acquire::Languages "none";\n')


def ext4_image(tree: Path, path: Path, label: str, size_mib: int) -> None:
    path.unlink(missing_ok=True)
    _run(["mkfs.ext4", "-q", "-F", "-L", label, "-d", str(tree), str(path), f"{size_mib}M"])


def esp_image(path: Path, out: Path, size_mib: int) -> None:
    work = out / "esp-work"
    work.mkdir(parents=True, exist_ok=True)
    (work / "grub-embedded.cfg").write_text(lay.GRUB_EMBEDDED)
    (work / "grub.cfg").write_text(lay.grub_cfg())
    efi = work / "BOOTX64.EFI"
    _run(["grub-mkstandalone", "-O", "x86_64-efi", "-o", str(efi),
          "--modules=" + lay.GRUB_MODULES, "--locales=", "--fonts=", "--themes=",
          f"boot/grub/grub.cfg={work / 'grub-embedded.cfg'}"])  # fmt: skip
    env = work / "grubenv"
    env.unlink(missing_ok=True)
    _run(["grub-editenv", str(env), "set",
          *[f"{k}={v}" for k, v in lay.grubenv_initial().items()]])  # fmt: skip
    path.unlink(missing_ok=True)
    _run(["mkfs.vfat", "-C", "-n", lay.ESP_LABEL, str(path), str(size_mib * 1024)])
    m = ["-i", str(path)]
    _run(["mmd", *m, "::/EFI", "::/EFI/BOOT"])
    _run(["mcopy", *m, str(efi), str(work / "grub.cfg"), str(env), "::/EFI/BOOT/"])


def assemble(disk: Path, parts: list[lay.Partition], images: dict[str, Path]) -> None:
    """The GPT disk with each partition's image written at its offset."""
    tmp = disk.with_suffix(".tmp")
    tmp.unlink(missing_ok=True)
    with tmp.open("wb") as f:
        f.truncate(lay.disk_mib(parts) * lay.MIB)
    _run(["sgdisk", *lay.sgdisk_args(parts), str(tmp)])
    for p in parts:
        image = images.get(p.label)
        if image is None:
            continue
        if image.stat().st_size > p.size_mib * lay.MIB:
            raise ImageError(f"{image.name} does not fit partition {p.label}")
        _run(["dd", f"if={image}", f"of={tmp}", "bs=1M", f"seek={p.start_mib}",
              "conv=notrunc,sparse", "status=none"])  # fmt: skip
    os.replace(tmp, disk)


@dataclass(frozen=True)
class Built:
    disk: Path  # the raw A/B disk (boot an overlay of it)
    rootfs: Path  # the slot's ext4 image (what a rootfs bundle carries)
    keys: Keys


def rootfs(out: Path, image: str, healthy: bool = True) -> Path:
    """The slot's ext4 image of ``image`` (made once): what slot A holds, what a bundle carries."""
    keys = rauc_keys(out)
    key = image_key(image, healthy)
    path = out / f"rootfs-{key}.ext4"
    if path.is_file():
        return path
    base = debootstrap(out)
    tree = out / f"tree-{key}"
    if tree.exists():
        shutil.rmtree(tree)
    _run(["cp", "-a", str(base), str(tree)])
    (tree / ".complete").unlink()
    customise(tree, image, keys, healthy)
    slot_mib = next(p.size_mib for p in lay.layout() if p.label == "rootfs-a")
    ext4_image(tree, path.with_suffix(".tmp"), "rootfs", slot_mib)
    shutil.rmtree(tree)
    os.replace(path.with_suffix(".tmp"), path)
    return path


def build(out: Path = DEFAULT_OUT, image: str = "1", healthy: bool = True) -> Built:
    """The disk for ``image`` (a name written to /etc/camfleet-image), made once."""
    need = missing_tools()
    if need:
        raise ImageError("missing on this host: apt install " + " ".join(need))
    out.mkdir(parents=True, exist_ok=True)
    parts = lay.layout()
    key = image_key(image, healthy)
    disk = out / f"disk-{key}.raw"
    keys = rauc_keys(out)
    slot = rootfs(out, image, healthy)
    if disk.is_file():
        return Built(disk, slot, keys)
    data_tree = out / "data-tree"
    data_tree.mkdir(exist_ok=True)
    data = out / f"data-{key}.ext4"
    ext4_image(data_tree, data, "data", next(p.size_mib for p in parts if p.label == "data"))
    esp = out / f"esp-{key}.vfat"
    esp_image(esp, out, next(p.size_mib for p in parts if p.label == "esp"))
    assemble(disk, parts, {"esp": esp, "rootfs-a": slot, "data": data})
    esp.unlink()
    data.unlink()
    return Built(disk, slot, keys)


def bundle(out: Path, image: str, healthy: bool = True) -> Path:
    """A signed RAUC rootfs bundle of ``image`` (``rauc bundle``, plain format), made once."""
    key = image_key(image, healthy)
    path = out / f"rootfs-{key}.raucb"
    if path.is_file():
        return path
    keys = rauc_keys(out)
    slot = rootfs(out, image, healthy)
    work = out / f"bundle-{key}"
    if work.exists():
        shutil.rmtree(work)
    work.mkdir()
    os.link(slot, work / "rootfs.ext4")
    (work / "manifest.raucm").write_text(lay.rauc_manifest(image))
    tmp = path.with_suffix(".tmp")
    tmp.unlink(missing_ok=True)
    # lz4: quick to make and, under TCG, to read in the guest (Debian's kernel reads it)
    _run(["rauc", "bundle", "--cert", str(keys.cert), "--key", str(keys.key),
          "--mksquashfs-args=-comp lz4", str(work), str(tmp)])  # fmt: skip
    shutil.rmtree(work)
    os.replace(tmp, path)
    return path


def media(files: list[Path], path: Path, label: str = lay.MEDIA_LABEL) -> Path:
    """An ext4 disk holding ``files`` at its top (the VM mounts it by label, read-only)."""
    tree = path.with_suffix(".tree")
    if tree.exists():
        shutil.rmtree(tree)
    tree.mkdir(parents=True)
    total = 0
    for f in files:
        os.link(f, tree / f.name) if f.stat().st_dev == tree.stat().st_dev else shutil.copy(
            f, tree / f.name
        )
        total += f.stat().st_size
    ext4_image(tree, path, label, total // lay.MIB + 64 + total // lay.MIB // 10)
    shutil.rmtree(tree)
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--image", default="1", help="the image's name (in /etc/camfleet-image)")
    args = ap.parse_args(argv)
    try:
        built = build(args.out, args.image)
    except ImageError as exc:
        print(f"vm-image: {exc}", file=sys.stderr)
        return 1
    print(built.disk)
    return 0


if __name__ == "__main__":
    sys.exit(main())
