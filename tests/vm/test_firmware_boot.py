"""A disk with its own bootloader boots on q35 through SeaBIOS or OVMF, with PCI devices,
the guest agent on virtio-serial and ACPI; the machine and firmware show in `image show`
and `vm show`.

The disk is made here as a user would make one: a FAT file system carrying syslinux (its BIOS
boot sector and its EFI loader), the Debian kernel the default image comes from, and the default
image's initramfs, which loads the virtio PCI drivers too.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.conftest import Server
from virtpool.node.qemu.accel import host_tsc_khz

SYSLINUX_EFI = Path("/usr/lib/SYSLINUX.EFI/efi64/syslinux.efi")
LDLINUX_E64 = Path("/usr/lib/syslinux/modules/efi64/ldlinux.e64")


def make_boot_disk(image_cache: Path, work: Path) -> Path:
    debs = sorted((image_cache / ".debs").glob("linux-image-*.deb"))
    assert debs, f"no kernel package cached in {image_cache / '.debs'}"
    subprocess.run(["dpkg", "-x", str(debs[-1]), str(work / "kernel")], check=True)
    (vmlinuz,) = (work / "kernel" / "boot").glob("vmlinuz-*")
    tsc = host_tsc_khz()
    config = work / "syslinux.cfg"
    config.write_text(
        "DEFAULT linux\nLABEL linux\n  KERNEL /vmlinuz\n  INITRD /initrd.gz\n"
        f"  APPEND console=ttyS0 loglevel=3 reboot=t panic=-1 virtpool.hostname=fw"
        f"{f' tsc_early_khz={tsc}' if tsc else ''}\n")
    disk = work / "boot.img"
    subprocess.run(["truncate", "-s", "64M", str(disk)], check=True)
    subprocess.run(["mkfs.vfat", "-n", "VPBOOT", str(disk)], check=True, capture_output=True)
    subprocess.run(["syslinux", "--install", str(disk)], check=True)
    mtools = {"MTOOLS_SKIP_CHECK": "1", "PATH": "/usr/bin:/bin"}

    def mcopy(source: Path, target: str) -> None:
        subprocess.run(["mcopy", "-i", str(disk), str(source), target], check=True, env=mtools)

    mcopy(vmlinuz, "::vmlinuz")
    mcopy(image_cache / "default" / "initramfs.cpio.gz", "::initrd.gz")
    mcopy(config, "::syslinux.cfg")
    subprocess.run(["mmd", "-i", str(disk), "::EFI", "::EFI/BOOT"], check=True, env=mtools)
    mcopy(SYSLINUX_EFI, "::EFI/BOOT/BOOTX64.EFI")
    mcopy(LDLINUX_E64, "::EFI/BOOT/ldlinux.e64")
    mcopy(config, "::EFI/BOOT/syslinux.cfg")
    return disk


@pytest.fixture(scope="module")
def boot_disk(image_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_boot_disk(image_cache, tmp_path_factory.mktemp("bootdisk"))


@pytest.mark.parametrize("firmware", ["bios", "uefi"])
def test_a_bootable_disk_boots_through_its_firmware_on_q35(
    server: Server, boot_disk: Path, firmware: str
) -> None:
    name = f"fw-{firmware}"
    imported = server.cli("image", "import", name, "--disk", str(boot_disk), "--firmware", firmware,
                          "--json")
    assert imported.returncode == 0, imported.stderr
    image = json.loads(imported.stdout)
    assert (image["machine"], image["firmware"], image["kernel"]) == ("q35", firmware, None)
    assert image["boot_timeout_s"] == 600  # a disk's own OS gets minutes, not the default 60 s
    shown = server.cli("image", "show", name).stdout
    assert f"q35 ({firmware})" in shown

    created = server.cli("vm", "create", name, "--image", name, "--disk", "1G", "--start", "--wait",
                         "--json")
    assert created.returncode == 0, created.stderr
    assert f"q35 ({firmware})" in server.cli("vm", "show", name).stdout
    # Booted by the firmware: PCI virtio devices, ACPI tables, and EFI only under OVMF.
    probe = server.api().exec(name, ["sh", "-c",
                                     "cat /sys/bus/pci/devices/*/vendor | sort -u; "
                                     "ls /sys/firmware/acpi/tables | grep -c DSDT; "
                                     "test -d /sys/firmware/efi && echo efi || echo no-efi; hostname"])
    assert probe.exit_code == 0, probe.stderr
    lines = probe.stdout.split()
    assert "0x1af4" in lines  # Red Hat's vendor id: the virtio-pci devices
    assert "1" in lines  # the DSDT
    assert ("efi" if firmware == "uefi" else "no-efi") in lines
    assert lines[-1] == "fw"  # the kernel command line came from the disk's bootloader
    stop = server.cli("vm", "stop", name, "--json")
    assert stop.returncode == 0 and json.loads(stop.stdout)["stopped_by"] == "guest-agent"
    server.api().delete_vm(name)
    assert server.cli("image", "delete", name).returncode == 0


def test_a_disk_with_a_kernel_and_no_root_gets_the_disk_as_root(server: Server, tmp_path: Path) -> None:
    kernel = server.data_dir / "images" / "default" / "vmlinux"
    initrd = server.data_dir / "images" / "default" / "initramfs.cpio.gz"
    disk = tmp_path / "root.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "4M"], check=True)
    imported = server.cli("image", "import", "withroot", "--kernel", str(kernel), "--initrd", str(initrd),
                          "--disk", str(disk), "--json")
    assert imported.returncode == 0, imported.stderr
    image = json.loads(imported.stdout)
    assert image["kernel_args"].startswith("root=/dev/vda rw")
    assert image["machine"] == "microvm" and image["firmware"] is None
    refused = server.cli("image", "import", "both", "--kernel", str(kernel), "--disk", str(disk),
                         "--firmware", "uefi")
    assert refused.returncode == 1 and "--firmware is for a disk that boots by itself" in refused.stderr
    nothing = server.cli("image", "import", "none")
    assert nothing.returncode == 1 and "needs a kernel or a bootable disk" in nothing.stderr
    assert server.cli("image", "delete", "withroot").returncode == 0
