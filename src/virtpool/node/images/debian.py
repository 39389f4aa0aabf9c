"""Build the built-in ``debian-12`` image: a Debian 12 disk that boots by itself (GRUB, BIOS).

The root filesystem comes from Debian's packages through ``mmdebstrap`` and the mirror this
host's apt uses (no downloaded cloud image): systemd with D-Bus and logind (qemu-ga's shutdown
and the ACPI power button need both), cloud-init (NoCloud only), qemu-guest-agent, openssh,
the cloud kernel. Documentation, man pages and locales are left out, and no Recommends are
installed.

The disk is made without loop devices or mounts, so that a build needs no more of the host
than files: ``mke2fs -d`` writes the root filesystem into the disk file at 1 MiB, GRUB's
``boot.img`` goes into the MBR (next to a partition table this module writes) and the
``core.img`` from ``grub-mkimage`` into the gap before the partition, where ``boot.img``
looks for it. The raw disk is then compressed into a qcow2 file, which VMs' disks sit on as
their copy-on-write base.

The image is cached like the default one (``build.build_cached``) and rebuilt only when its
recipe changes: the manifest records the SHA-256 of the recipe (packages, units, files written).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
from pathlib import Path

from virtpool.model.errors import OperationFailed
from virtpool.model.image import FIRMWARE_BOOT_TIMEOUT_S
from virtpool.node.images.build import Progress, build_cached, intact_manifest, run_tool
from virtpool.node.images.manifest import Manifest, file_entry, write_manifest

IMAGE_NAME = "debian-12"
RECIPE_VERSION = 1
SUITE = "bookworm"
PACKAGES = (
    "systemd", "systemd-sysv", "dbus", "libpam-systemd", "udev",
    "cloud-init", "cloud-guest-utils",  # growpart: the root grows with the VM's disk
    "qemu-guest-agent", "openssh-server", "sudo", "iproute2",
    "linux-image-cloud-amd64", "initramfs-tools",
)
# Not needed in a guest, and each costs boot time under TCG.
MASKED_UNITS = (
    "apt-daily.timer", "apt-daily-upgrade.timer", "e2scrub_all.timer", "e2scrub_reap.service",
    "fstrim.timer", "dpkg-db-backup.timer",
)
ENABLED_UNITS = ("systemd-networkd.service",)  # cloud-init renders its network config for it
DISK_MIB = 1024  # a VM's default disk: the image may be no larger
PARTITION_START = 2048  # sectors: 1 MiB, the gap GRUB's core.img lives in
SECTOR = 512
FS_LABEL = "rootfs"
GRUB_DIR = Path("/usr/lib/grub/i386-pc")
GRUB_MODULES = ("biosdisk", "part_msdos", "ext2", "normal", "linux", "serial", "terminal")
DISK_FILE = "disk.qcow2"
KERNEL_ARGS = "root=LABEL=rootfs ro console=ttyS0,115200 loglevel=3"

GRUB_CFG = f"""\
serial --unit=0 --speed=115200
terminal_input serial console
terminal_output serial console
set timeout=0
menuentry "Debian 12" {{
    linux /vmlinuz {KERNEL_ARGS}
    initrd /initrd.img
}}
"""
FSTAB = f"LABEL={FS_LABEL} / ext4 defaults,errors=remount-ro 0 1\n"
# NoCloud only: ds-identify and every other datasource's probing cost a minute under TCG.
CLOUD_CFG = """\
datasource_list: [NoCloud, None]
system_info:
  network:
    renderers: [networkd]
ssh_genkeytypes: [ed25519, ecdsa]
locale: false
grub_dpkg:
  enabled: false
apt:
  preserve_sources_list: true
"""

_TOOLS_HINT = "run scripts/install-system-packages.sh (it installs mmdebstrap, grub-pc-bin, e2fsprogs, qemu-utils)"


# --------------------------------------------------------------------------------------
# Pure helpers
# --------------------------------------------------------------------------------------


def partition_table(start: int, sectors: int, signature: int = 0x76706F6F) -> bytes:
    """Bytes 440-511 of an MBR: disk signature, one bootable Linux partition, 0x55AA.

    CHS fields hold the "use LBA" values (1023/254/63) that every modern tool writes.
    """
    chs_max = b"\xfe\xff\xff"
    entry = struct.pack("<B3sB3sII", 0x80, chs_max, 0x83, chs_max, start, sectors)
    return struct.pack("<IH", signature, 0) + entry + bytes(16 * 3) + b"\x55\xaa"


def recipe_sha256() -> str:
    """What the cache compares: everything that goes into the image (bump RECIPE_VERSION
    when a build step changes what it makes)."""
    recipe = json.dumps([RECIPE_VERSION, SUITE, PACKAGES, MASKED_UNITS, ENABLED_UNITS, DISK_MIB,
                         PARTITION_START, FS_LABEL, GRUB_MODULES, GRUB_CFG, FSTAB, CLOUD_CFG])
    return hashlib.sha256(recipe.encode()).hexdigest()


def host_apt_sources(etc_apt: Path = Path("/etc/apt")) -> list[Path]:
    """The files that name the mirrors this host's apt uses (one-line and deb822 style)."""
    found = [etc_apt / "sources.list"] if (etc_apt / "sources.list").is_file() else []
    parts = etc_apt / "sources.list.d"
    if parts.is_dir():
        found += sorted(p for p in parts.iterdir() if p.suffix in (".list", ".sources") and p.is_file())
    return [p for p in found if p.read_text().strip()]


# --------------------------------------------------------------------------------------
# Build
# --------------------------------------------------------------------------------------


def build_debian_image(images_dir: Path, name: str = IMAGE_NAME, *,
                       progress: Progress | None = None) -> tuple[Manifest, bool]:
    """Build (or reuse) the debian-12 image at ``images_dir/name``; see the module's text."""
    return build_cached(Path(images_dir), name, lambda build_dir, report: _populate(build_dir, name, report),
                        current=_current, progress=progress)


def _current(image_dir: Path) -> Manifest | None:
    manifest = intact_manifest(image_dir)
    if manifest is None or manifest.source.get("recipe_sha256") != recipe_sha256():
        return None
    return manifest


def _populate(build_dir: Path, name: str, report: Progress) -> Manifest:
    work = build_dir / "work"
    root = work / "root"
    work.mkdir()
    sources = host_apt_sources()
    if not sources:
        raise OperationFailed("this host's apt names no mirror (/etc/apt/sources.list[.d] is empty)",
                              hint="configure apt with a Debian mirror, then build again")
    report("installing Debian packages (mmdebstrap)", 0.05)
    run_tool(["mmdebstrap", "--variant=minbase", "--mode=root", "--format=directory", "--quiet",
              "--aptopt=APT::Install-Recommends \"false\"",
              "--dpkgopt=path-exclude=/usr/share/doc/*", "--dpkgopt=path-exclude=/usr/share/man/*",
              "--dpkgopt=path-exclude=/usr/share/info/*", "--dpkgopt=path-exclude=/usr/share/locale/*",
              "--dpkgopt=path-include=/usr/share/locale/locale.alias",
              f"--include={','.join(PACKAGES)}", SUITE, str(root), *map(str, sources)],
             what="install the Debian root filesystem", hint=_TOOLS_HINT)
    report("configuring the guest", 0.7)
    kernel_release = _configure(root)
    report("making the disk", 0.75)
    raw = work / "disk.raw"
    _make_disk(root, raw, work)
    report("compressing the disk", 0.85)
    run_tool(["qemu-img", "convert", "-q", "-c", "-f", "raw", "-O", "qcow2", str(raw),
              str(build_dir / DISK_FILE)], what="compress the disk", hint=_TOOLS_HINT)
    shutil.rmtree(work)
    manifest = Manifest(
        name=name, kernel=None, disk=file_entry(build_dir, DISK_FILE), disk_format="qcow2",
        machine="q35", firmware="bios", boot_timeout_s=FIRMWARE_BOOT_TIMEOUT_S,
        source={"kind": "build", "recipe": IMAGE_NAME, "recipe_sha256": recipe_sha256(),
                "suite": SUITE, "kernel_release": kernel_release, "cloud_init": "nocloud"},
    )
    write_manifest(build_dir, manifest)
    return manifest


def _configure(root: Path) -> str:
    """Make the installed tree a guest: fstab, GRUB's files, cloud-init's config, units; a
    fresh identity for each VM (no machine-id, no SSH host keys: systemd and cloud-init make
    them at first boot). Returns the kernel release."""
    kernels = sorted((root / "boot").glob("vmlinuz-*"))
    if not kernels or not (root / "vmlinuz").is_symlink() or not (root / "initrd.img").is_symlink():
        raise OperationFailed("the installed tree has no kernel and initrd at /vmlinuz, /initrd.img",
                              hint="the Debian kernel packaging changed; virtpool's recipe needs updating")
    (root / "etc" / "fstab").write_text(FSTAB)
    (root / "etc" / "hostname").write_text("localhost\n")
    (root / "etc" / "machine-id").write_text("")
    (root / "var" / "lib" / "dbus" / "machine-id").unlink(missing_ok=True)
    for key in (root / "etc" / "ssh").glob("ssh_host_*"):
        key.unlink()
    (root / "etc" / "cloud" / "cloud.cfg.d" / "90-virtpool.cfg").write_text(CLOUD_CFG)
    grub = root / "boot" / "grub"
    # GRUB's normal mode loads its modules and command lists from here, as grub-install's would.
    shutil.copytree(GRUB_DIR, grub / "i386-pc")
    (grub / "grub.cfg").write_text(GRUB_CFG)
    run_tool(["systemctl", f"--root={root}", "enable", *ENABLED_UNITS], what="enable the guest's units")
    run_tool(["systemctl", f"--root={root}", "mask", *MASKED_UNITS], what="mask the guest's idle timers")
    return kernels[-1].name.removeprefix("vmlinuz-")


def _make_disk(root: Path, raw: Path, work: Path) -> None:
    sectors = DISK_MIB * 1024 * 1024 // SECTOR - PARTITION_START
    with raw.open("wb") as disk:
        disk.truncate(DISK_MIB * 1024 * 1024)
    # nodiscard: mke2fs would punch holes in the whole file, the boot sectors included.
    run_tool(["mke2fs", "-q", "-F", "-t", "ext4", "-L", FS_LABEL, "-d", str(root),
              "-E", f"offset={PARTITION_START * SECTOR},nodiscard", str(raw), f"{sectors // 2}k"],
             what="write the root filesystem", hint=_TOOLS_HINT)
    core = work / "core.img"
    run_tool(["grub-mkimage", "-O", "i386-pc", "-d", str(GRUB_DIR), "-o", str(core),
              "-p", "(hd0,msdos1)/boot/grub", *GRUB_MODULES], what="make GRUB's core image",
             hint=_TOOLS_HINT)
    boot = (GRUB_DIR / "boot.img").read_bytes()
    core_bytes = core.read_bytes()
    if len(boot) != SECTOR or len(core_bytes) > (PARTITION_START - 1) * SECTOR:
        raise OperationFailed(f"GRUB's boot.img ({len(boot)} bytes) or core.img ({len(core_bytes)} "
                              "bytes) does not fit before the partition",
                              hint="the grub-pc-bin package changed; virtpool's recipe needs updating")
    fd = os.open(raw, os.O_WRONLY)
    try:
        # boot.img's code (440 bytes) reads core.img from sector 1, its default; core.img's
        # first sector lists where the rest is (grub-mkimage filled it in for sector 2 on).
        os.pwrite(fd, boot[:440] + partition_table(PARTITION_START, sectors), 0)
        os.pwrite(fd, core_bytes, SECTOR)
    finally:
        os.close(fd)
