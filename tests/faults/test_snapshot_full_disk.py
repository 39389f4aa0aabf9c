"""A full data disk during a snapshot: a clear error, the VM keeps running, and nothing half-made
is listed as a snapshot. The data dir is a small ext4 on a loop device (prefix "da"), filled from
the host by a file that takes what the VMs' users may still write."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Server, passable, qemu_pids, wait_for
from virtpool.sdk import Client
from virtpool.sdk.errors import ServerError


@pytest.fixture
def small_data_dir(tmp_path: Path, image_cache: Path) -> Iterator[Path]:
    # A short mount point: the VMs' socket paths must fit in sun_path's 108 bytes.
    mount = Path(tempfile.mkdtemp(prefix="da-", dir="/tmp"))
    image = tmp_path / "da-data.ext4"
    subprocess.run(["truncate", "-s", "600M", str(image)], check=True)
    subprocess.run(["mkfs.ext4", "-q", str(image)], check=True)
    subprocess.run(["mount", "-o", "loop", str(image), str(mount)], check=True)
    try:
        data_dir = mount / "data"
        (data_dir / "images").mkdir(parents=True)
        shutil.copytree(image_cache / "default", data_dir / "images" / "default")  # no links across devices
        passable(data_dir)
        yield data_dir
    finally:
        for pid in qemu_pids(mount):
            os.kill(pid, 9)
        subprocess.run(["umount", "-l", str(mount)], check=True)
        mount.rmdir()
        image.unlink()


def fill(path: Path, leave_mib: int) -> Path:
    """A root file that leaves ``leave_mib`` MiB to unprivileged writers (QEMU runs as one)."""
    filler = path / "filler"
    stat = os.statvfs(path)
    size = stat.f_bavail * stat.f_frsize - leave_mib * 1024 * 1024
    current = filler.stat().st_size if filler.exists() else 0
    subprocess.run(["fallocate", "-l", str(current + size), str(filler)], check=True)
    return filler


def guest_ran(api: Client, script: str) -> bool:
    try:
        return api.exec("full", ["sh", "-c", script]).exit_code == 0
    except ServerError:
        return False


def test_snapshots_on_a_full_data_disk_fail_cleanly_and_the_vm_runs_on(small_data_dir: Path) -> None:
    server = Server(small_data_dir, boot_timeout=120).start()
    try:
        api = server.api()
        api.create_vm("full", start=True, disk_mib=128)
        vm = api.wait_vm("full")
        assert vm.state == "running", vm.error
        # At a load of 20+ the agent's 1 s sync can miss right after the boot (s1's known flake):
        # the first command is retried, the ones under test are not.
        assert wait_for(lambda: guest_ran(api, "echo before > /root/f; sync"), timeout=60)
        disk = small_data_dir / "vms" / api.vm("full").id / "disk.qcow2"

        # Less room than its RAM: the memory snapshot is refused before anything is written.
        filler = fill(small_data_dir, leave_mib=150)
        size_before = disk.stat().st_size
        refused = server.cli("vm", "snapshot", "create", "full", "mem", "--memory")
        assert refused.returncode == 4, refused.stderr  # out of resources
        assert "needs up to 320 MiB" in refused.stderr and "Nothing was written, the VM runs on" in refused.stderr
        assert "free space on the host's data disk" in refused.stderr
        assert disk.stat().st_size == size_before

        # No room at all: the disk snapshot fails in QEMU, and is not listed.
        fill(small_data_dir, leave_mib=0)
        failed = server.cli("vm", "snapshot", "create", "full", "disk")
        assert failed.returncode == 4, (failed.stdout, failed.stderr)
        assert "no space left on the host's data disk while taking snapshot 'disk'" in failed.stderr
        assert "nothing of it was kept" in failed.stderr
        listed = server.cli("vm", "snapshot", "list", "full", "--json")
        assert json.loads(listed.stdout) == []
        assert "Traceback" not in server.log.read_text()

        filler.unlink()
        vm = api.vm("full")
        assert vm.state == "running", vm
        assert api.exec("full", ["cat", "/root/f"]).stdout == "before\n"
        # Once there is room, the same snapshots work.
        assert server.cli("vm", "snapshot", "create", "full", "disk").returncode == 0
        assert server.cli("vm", "snapshot", "create", "full", "mem", "--memory").returncode == 0
        assert [s.name for s in api.snapshots("full")] == ["disk", "mem"]
        api.delete_vm("full", force=True)
        assert list((small_data_dir / "vms").iterdir()) == []
    finally:
        server.cleanup()
