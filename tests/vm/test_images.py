"""Images: list/show through the CLI, imports of the user's own files, and refusals."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from tests.conftest import Server, qemu_pids


def default_files(server: Server) -> tuple[Path, Path]:
    image = server.data_dir / "images" / "default"
    return image / "vmlinux", image / "initramfs.cpio.gz"


def image_dirs(server: Server) -> list[str]:
    return sorted(p.name for p in (server.data_dir / "images").iterdir())


def test_list_and_show_the_default_image(server: Server) -> None:
    listed = json.loads(server.cli("image", "list", "--json").stdout)
    assert [i["name"] for i in listed] == ["default"]
    shown = json.loads(server.cli("image", "show", "default", "--json").stdout)
    assert len(shown["kernel"]["sha256"]) == 64 and shown["initrd"]["size"] > 0
    assert "linux-image" in " ".join(shown["source"])
    table = server.cli("image", "show", "default")
    assert "sha256:" + shown["kernel"]["sha256"] in table.stdout.replace("\n", "")


def test_build_of_an_existing_image_does_nothing(server: Server) -> None:
    before = (server.data_dir / "images" / "default" / "manifest.json").read_text()
    result = server.cli("image", "build", "--json")
    assert result.returncode == 0, result.stderr
    operation = json.loads(result.stdout)  # `--json` prints the build's operation
    assert operation["status"] == "succeeded"
    assert operation["result"]["built"] is False
    assert (server.data_dir / "images" / "default" / "manifest.json").read_text() == before


def test_imported_kernel_initrd_and_raw_disk_boot_with_the_disk_as_root_device(
    server: Server, tmp_path: Path
) -> None:
    kernel, initrd = default_files(server)
    disk = tmp_path / "disk.raw"
    content = bytearray(b"VIRTPOOL-DISK-MARKER".ljust(8 * 1024 * 1024, b"\0"))
    content[510:512] = b"\x55\xaa"  # an MBR boot signature: a raw disk must look like one
    disk.write_bytes(bytes(content))
    result = server.cli("image", "import", "mine", "--kernel", str(kernel), "--initrd", str(initrd),
                        "--disk", str(disk), "--json")
    assert result.returncode == 0, result.stderr
    image = json.loads(result.stdout)
    assert image["disk_format"] == "raw"
    # Copied in: the user's file can go away.
    disk.unlink()

    api = server.api()
    api.create_vm("fromdisk", image="mine", disk_mib=16, start=True)
    assert api.wait_vm("fromdisk").state == "running"
    head = api.exec("fromdisk", ["sh", "-c", "head -c 20 /dev/vda; echo; cat /sys/block/vda/size"])
    marker, sectors = head.stdout.splitlines()
    assert marker == "VIRTPOOL-DISK-MARKER"
    assert sectors == str(16 * 2048)  # the overlay has the size asked for, not the base's

    # The image is in use: it cannot be deleted.
    refused = server.cli("image", "delete", "mine")
    assert refused.returncode == 1 and "used by VMs: fromdisk" in refused.stderr
    api.delete_vm("fromdisk", force=True)
    assert server.cli("image", "delete", "mine").returncode == 0
    assert "mine" not in image_dirs(server)


def test_qcow2_with_a_backing_file_is_refused_before_qemu_opens_it(server: Server, tmp_path: Path) -> None:
    kernel, _ = default_files(server)
    evil = tmp_path / "evil.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", "/etc/shadow", "-F", "raw",
                    str(evil), "64M"], check=True)
    before = image_dirs(server)
    result = server.cli("image", "import", "evil", "--kernel", str(kernel), "--disk", str(evil))
    assert result.returncode == 1
    assert "backing file ('/etc/shadow')" in " ".join(result.stderr.split())
    assert image_dirs(server) == before  # no image, no staging leftovers


def test_qcow2_pointing_at_a_block_device_is_refused(server: Server, tmp_path: Path) -> None:
    kernel, _ = default_files(server)
    evil = tmp_path / "dev.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", "/dev/vda", "-F", "raw",
                    "-u", str(evil), "1G"], check=True)
    result = server.cli("image", "import", "devdisk", "--kernel", str(kernel), "--disk", str(evil))
    assert result.returncode == 1
    assert "/dev/vda" in result.stderr


def test_a_file_that_is_not_a_kernel_is_refused(server: Server, tmp_path: Path) -> None:
    junk = tmp_path / "junk"
    junk.write_bytes(b"#!/bin/sh\necho not a kernel\n")
    before = image_dirs(server)
    result = server.cli("image", "import", "junk", "--kernel", str(junk))
    assert result.returncode == 1
    assert "not a Linux kernel" in " ".join(result.stderr.split())
    assert image_dirs(server) == before


def test_duplicate_and_invalid_image_names_are_refused(server: Server) -> None:
    kernel, _ = default_files(server)
    dup = server.cli("image", "import", "default", "--kernel", str(kernel))
    assert dup.returncode == 1 and "exists" in dup.stderr
    bad = server.cli("image", "import", "../../etc", "--kernel", str(kernel))
    assert bad.returncode == 1 and "not a valid image name" in " ".join(bad.stderr.split())
    assert qemu_pids(server.data_dir) == []
