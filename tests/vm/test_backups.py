"""Backups of a running VM: a full one, then an incremental, restored byte for byte, and the
faults (a directory that is not empty or not writable, a target that fills up) that change
nothing and leave the VM running."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Server


def guest(server: Server, name: str, script: str) -> str:
    ran = server.api().exec(name, ["sh", "-c", script], timeout=120)
    assert ran.exit_code == 0, ran.stderr
    return ran.stdout


def same_disk(a: Path, b: Path) -> subprocess.CompletedProcess[str]:
    # -U: the source is open in QEMU (paused: QEMU flushed it when it stopped the vCPUs).
    return subprocess.run(["qemu-img", "compare", "-U", "-f", "qcow2", "-F", "qcow2", str(a), str(b)],
                          capture_output=True, text=True)


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 24 MiB ext4 file system on a loop device (not tmpfs: see QEMU-NOTES.md)."""
    image, mount = tmp_path / "small.ext4", tmp_path / "small"
    subprocess.run(["truncate", "-s", "24M", str(image)], check=True)
    subprocess.run(["mkfs.ext4", "-q", str(image)], check=True)
    mount.mkdir()
    subprocess.run(["mount", "-o", "loop", str(image), str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["chattr", "-i", str(mount / "locked")], capture_output=True)
        subprocess.run(["umount", str(mount)], check=True)


def test_full_then_incremental_backup_restores_byte_for_byte(server: Server, tmp_path: Path) -> None:
    api = server.api()
    api.create_vm("data", disk_mib=512, start=True)
    assert api.wait_vm("data").state == "running"
    disk = server.data_dir / "vms" / api.vm("data").id / "disk.qcow2"
    guest(server, "data", "dd if=/dev/urandom of=/root/big bs=1M count=24 2>/dev/null; sync")
    target = tmp_path / "chain"

    api.pause_vm("data")  # a fixed state to compare against; the backup itself needs no pause
    full = server.cli("vm", "backup", "create", "data", "--to", str(target), "--json")
    assert full.returncode == 0, full.stderr
    assert same_disk(disk, target / "0000-full.qcow2").returncode == 0
    api.resume_vm("data")

    guest(server, "data", "echo small change > /root/small; sync")
    api.pause_vm("data")
    inc = server.cli("vm", "backup", "create", "data", "--to", str(target), "--incremental", "--json")
    assert inc.returncode == 0, inc.stderr
    chain = json.loads(inc.stdout)
    assert [f["kind"] for f in chain["files"]] == ["full", "incremental"]
    full_bytes, inc_bytes = (f["bytes"] for f in chain["files"])
    assert full_bytes > 24 << 20 and inc_bytes < full_bytes / 5
    assert same_disk(disk, target / "0001-incremental.qcow2").returncode == 0  # read through the chain
    api.resume_vm("data")
    # An incremental while the guest runs and writes, too.
    guest(server, "data", "echo more > /root/more; sync")
    running = server.cli("vm", "backup", "create", "data", "--to", str(target), "--incremental")
    assert running.returncode == 0, running.stderr

    listed = server.cli("vm", "backup", "list", str(target), "--json")
    assert [f["file"] for f in json.loads(listed.stdout)["files"]][-1] == "0002-incremental.qcow2"

    restored = server.cli("vm", "restore-backup", str(target), "copy", "--json")
    assert restored.returncode == 0, restored.stderr
    copy = json.loads(restored.stdout)
    assert copy["state"] == "stopped"
    copy_disk = server.data_dir / "vms" / copy["id"] / "disk.qcow2"
    assert same_disk(target / "0002-incremental.qcow2", copy_disk).returncode == 0
    api.start_vm("copy")
    assert api.wait_vm("copy").state == "running"
    source_sum = guest(server, "data", "md5sum /root/big; cat /root/small /root/more")
    assert guest(server, "copy", "md5sum /root/big; cat /root/small /root/more") == source_sum
    api.delete_vm("copy", force=True)

    # A VM that is backed up can still go back to a snapshot, running or stopped. The restore
    # changes blocks the backups' tracking never saw, so the next incremental asks for a full.
    taken = server.cli("vm", "snapshot", "create", "data", "live", "--memory")
    assert taken.returncode == 0, taken.stderr
    guest(server, "data", "echo after > /root/after; sync")
    back = server.cli("vm", "snapshot", "restore", "data", "live")
    assert back.returncode == 0, back.stderr
    assert guest(server, "data", "test -e /root/after || echo gone; cat /root/more") == "gone\nmore\n"
    untracked = server.cli("vm", "backup", "create", "data", "--to", str(target), "--incremental")
    assert untracked.returncode != 0 and "a snapshot restored" in untracked.stderr
    assert "full backup" in untracked.stderr
    again = tmp_path / "again"
    assert server.cli("vm", "backup", "create", "data", "--to", str(again)).returncode == 0
    stopped = server.cli("vm", "stop", "data", "--json")  # a clean exit keeps the bitmap in the disk
    assert stopped.returncode == 0 and json.loads(stopped.stdout)["stopped_by"] != "killed", stopped.stdout
    assert server.cli("vm", "snapshot", "create", "data", "cold").returncode == 0
    offline = server.cli("vm", "snapshot", "restore", "data", "cold")
    assert offline.returncode == 0, offline.stderr
    api.delete_vm("data", force=True)


def test_bad_targets_and_a_full_disk_change_nothing_and_the_vm_keeps_running(
    server: Server, tmp_path: Path, small_fs: Path
) -> None:
    api = server.api()
    api.create_vm("busy", disk_mib=512, start=True)
    assert api.wait_vm("busy").state == "running"
    guest(server, "busy", "dd if=/dev/urandom of=/root/big bs=1M count=40 2>/dev/null; sync")

    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "mine.txt").write_text("not a backup")
    refused = server.cli("vm", "backup", "create", "busy", "--to", str(occupied))
    assert refused.returncode == 1 and "is not empty" in refused.stderr
    assert sorted(p.name for p in occupied.iterdir()) == ["mine.txt"]

    locked = small_fs / "locked"
    locked.mkdir()
    subprocess.run(["chattr", "+i", str(locked)], check=True)  # not writable, even for root
    unwritable = server.cli("vm", "backup", "create", "busy", "--to", str(locked / "new"))
    assert unwritable.returncode == 1 and "is not writable" in unwritable.stderr

    no_chain = server.cli("vm", "backup", "create", "busy", "--to", str(tmp_path / "none"), "--incremental")
    assert no_chain.returncode == 1 and "holds no virtpool backup" in no_chain.stderr

    before = sorted(p.name for p in small_fs.iterdir())
    full = server.cli("vm", "backup", "create", "busy", "--to", str(small_fs / "chain"))
    assert full.returncode == 1, full.stdout
    assert "No space left on device" in full.stderr and "keeps running" in full.stderr
    assert sorted(p.name for p in small_fs.iterdir()) == before  # no half backup left behind
    assert api.vm("busy").state == "running"
    assert guest(server, "busy", "echo alive") == "alive\n"
    # The failed attempt did not break change tracking: a full backup elsewhere works.
    retry = server.cli("vm", "backup", "create", "busy", "--to", str(tmp_path / "retry"))
    assert retry.returncode == 0, retry.stderr
    api.delete_vm("busy", force=True)
