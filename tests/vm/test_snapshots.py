"""Snapshots of real VMs: disk snapshots of stopped and running VMs, memory snapshots that bring
the running state back into a running VM, and the refusals that change nothing."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

from tests.conftest import Server, wait_for
from virtpool.node.sandbox import acl


def guest(server: Server, name: str, script: str) -> str:
    ran = server.api().exec(name, ["sh", "-c", script])
    assert ran.exit_code == 0, ran.stderr
    return ran.stdout


def test_disk_snapshots_of_a_running_and_a_stopped_vm_restore_its_files(server: Server) -> None:
    api = server.api()
    api.create_vm("snappy", start=True)
    assert api.wait_vm("snappy").state == "running"
    guest(server, "snappy", "echo one > /root/state; sync")

    taken = server.cli("vm", "snapshot", "create", "snappy", "first", "--json")
    assert taken.returncode == 0, taken.stderr
    assert json.loads(taken.stdout)["memory"] is False
    guest(server, "snappy", "echo two > /root/state; sync")

    # The same name again changes nothing and says so.
    again = server.cli("vm", "snapshot", "create", "snappy", "first")
    assert again.returncode == 1 and "already has a snapshot named 'first'" in again.stderr
    # A disk snapshot is not restored under a running guest.
    refused = server.cli("vm", "snapshot", "restore", "snappy", "first")
    assert refused.returncode == 1 and "stop the VM first" in refused.stderr
    assert guest(server, "snappy", "cat /root/state") == "two\n"

    assert server.cli("vm", "stop", "snappy").returncode == 0
    offline = server.cli("vm", "snapshot", "create", "snappy", "second")  # of the stopped VM
    assert offline.returncode == 0, offline.stderr
    restored = server.cli("vm", "snapshot", "restore", "snappy", "first")
    assert restored.returncode == 0, restored.stderr
    assert server.cli("vm", "start", "snappy").returncode == 0
    assert guest(server, "snappy", "cat /root/state") == "one\n"

    listed = json.loads(server.cli("vm", "snapshot", "list", "snappy", "--json").stdout)
    assert [s["name"] for s in listed] == ["first", "second"]
    assert server.cli("vm", "snapshot", "delete", "snappy", "second").returncode == 0
    missing = server.cli("vm", "snapshot", "delete", "snappy", "second")
    assert missing.returncode == 1 and "no snapshot named 'second'" in missing.stderr
    api.delete_vm("snappy", force=True)


def test_a_memory_snapshot_brings_back_the_running_state(server: Server) -> None:
    api = server.api()
    api.create_vm("mem", start=True)
    assert api.wait_vm("mem").state == "running"
    # Only in RAM (/tmp is tmpfs): a disk snapshot could not bring this back.
    guest(server, "mem", "echo before > /tmp/ram-only")
    taken = server.cli("vm", "snapshot", "create", "mem", "live", "--memory", "--json")
    assert taken.returncode == 0, taken.stderr
    assert json.loads(taken.stdout)["memory_bytes"] > 0
    guest(server, "mem", "echo after > /tmp/ram-only")

    restored = server.cli("vm", "snapshot", "restore", "mem", "live")  # into the running VM
    assert restored.returncode == 0, restored.stderr
    assert api.vm("mem").state == "running"
    assert guest(server, "mem", "cat /tmp/ram-only") == "before\n"

    assert server.cli("vm", "stop", "mem").returncode == 0
    no_memory = server.cli("vm", "snapshot", "create", "mem", "cold", "--memory")
    assert no_memory.returncode == 1 and "needs a running guest" in no_memory.stderr
    assert [s.name for s in api.snapshots("mem")] == ["live"]
    api.delete_vm("mem", force=True)


def disk_of(server: Server, name: str) -> dict:
    path = server.data_dir / "vms" / server.api().vm(name).id / "disk.qcow2"
    info = json.loads(subprocess.run(["qemu-img", "info", "-U", "--output=json", str(path)],
                                     capture_output=True, text=True, check=True).stdout)
    return {"backing": info.get("full-backing-filename"), "allocated": path.stat().st_blocks * 512}


def boot(server: Server, name: str) -> None:
    server.api().start_vm(name)
    vm = server.api().wait_vm(name)
    assert vm.state == "running", vm.error


def bases(server: Server) -> list[str]:
    return sorted(p.name for p in (server.data_dir / "bases").glob("*.qcow2"))


def test_linked_and_full_clones_are_vms_of_their_own_and_outlive_their_source(server: Server) -> None:
    api = server.api()
    # Its clones keep its boot timeout: minutes, for a machine as busy as a shared CI runner.
    api.create_vm("origin", start=True, boot_timeout_s=240)
    assert api.wait_vm("origin").state == "running"
    guest(server, "origin", "echo v1 > /root/file; dd if=/dev/urandom of=/root/data bs=1M count=8; sync")
    assert server.cli("vm", "snapshot", "create", "origin", "v1").returncode == 0
    guest(server, "origin", "echo v2 > /root/file; sync")

    busy = server.cli("vm", "clone", "origin", "twin")  # a running disk is not copied
    assert busy.returncode == 1 and "a clone copies a stopped disk" in busy.stderr
    from_snapshot = server.cli("vm", "clone", "origin", "old", "--snapshot", "v1", "--json")
    assert from_snapshot.returncode == 0, from_snapshot.stderr
    assert server.cli("vm", "stop", "origin").returncode == 0
    twin = server.cli("vm", "clone", "origin", "twin")
    assert twin.returncode == 0 and "linked" in twin.stdout, twin.stderr
    assert server.cli("vm", "clone", "origin", "twin").returncode == 1  # the name is taken
    solo = server.cli("vm", "clone", "origin", "solo", "--full")
    assert solo.returncode == 0 and "full copy" in solo.stdout, solo.stderr
    # A second linked clone of the same snapshot shares its base.
    assert server.cli("vm", "clone", "origin", "old2", "--snapshot", "v1").returncode == 0

    # Linked: small disks over a base in the store; full: a disk with no backing file.
    origin_size = disk_of(server, "origin")["allocated"]
    assert len(bases(server)) == 2
    for name in ("twin", "old", "old2"):
        linked = disk_of(server, name)
        assert linked["backing"] and Path(linked["backing"]).parent == server.data_dir / "bases"
        assert linked["allocated"] < 2 * 1024 * 1024 < origin_size, (name, linked, origin_size)
    assert disk_of(server, "old")["backing"] == disk_of(server, "old2")["backing"]
    assert disk_of(server, "solo")["backing"] is None and disk_of(server, "solo")["allocated"] > 8 << 20

    boot(server, "twin")
    assert guest(server, "twin", "cat /root/file; hostname").split() == ["v2", "twin"]
    twin_uid = (server.data_dir / "vms" / api.vm("twin").id / "disk.qcow2").stat().st_uid
    base_file = Path(disk_of(server, "twin")["backing"])
    # No other VM's user may read it: others have no bits, the group is root's (its group bits
    # are the ACL's mask), and the one named user is the twin's.
    assert acl.readers(base_file) == {twin_uid} and twin_uid != 0
    assert base_file.stat().st_mode & 0o007 == 0 and base_file.stat().st_gid == 0
    guest(server, "twin", "echo twin > /root/file; sync")
    # Writes do not cross, either way.
    boot(server, "origin")
    assert guest(server, "origin", "cat /root/file") == "v2\n"
    guest(server, "origin", "echo v3 > /root/file; sync")
    assert guest(server, "twin", "cat /root/file") == "twin\n"

    # The source goes; its linked clones keep their bases: the twin reads its base (its guest's
    # page cache dropped first), and the full copy boots on its own.
    api.delete_vm("origin", force=True)
    assert len(bases(server)) == 2
    before = guest(server, "twin", "md5sum < /root/data")
    assert guest(server, "twin", "sync; echo 3 > /proc/sys/vm/drop_caches; md5sum < /root/data") == before
    boot(server, "solo")
    assert guest(server, "solo", "cat /root/file; hostname").split() == ["v2", "solo"]
    assert guest(server, "solo", "md5sum < /root/data") == before
    assert subprocess.run(["qemu-img", "check", "-U", str(server.data_dir / "vms" / api.vm("old").id / "disk.qcow2")],
                          capture_output=True).returncode == 0  # its chain opens: the base is there

    # A base goes with its last clone.
    api.delete_vm("old", force=True)
    assert len(bases(server)) == 2  # old2 still reads it
    api.delete_vm("twin", force=True)
    assert len(bases(server)) == 1
    for name in ("old2", "solo"):
        api.delete_vm(name, force=True)
    assert list((server.data_dir / "vms").iterdir()) == []
    assert list((server.data_dir / "bases").iterdir()) == []


def test_a_vm_created_from_a_memory_snapshot_resumes_it_with_its_own_name(server: Server, tmp_path: Path) -> None:
    api = server.api()
    api.create_vm("tmpl", start=True, boot_timeout_s=240)
    assert api.wait_vm("tmpl").state == "running"
    guest(server, "tmpl", "echo warm > /tmp/ram-only; echo disk > /root/kept; sync")  # /tmp: RAM
    # A backup first: its dirty bitmap is in the disk, in use while the VM runs.
    assert server.cli("vm", "backup", "create", "tmpl", "--to", str(tmp_path / "b")).returncode == 0
    assert server.cli("vm", "snapshot", "create", "tmpl", "warm", "--memory").returncode == 0
    assert server.cli("vm", "snapshot", "create", "tmpl", "cold").returncode == 0

    # From the running source: its guest is paused for the copy, and runs on.
    live = server.cli("vm", "create", "live", "--from-snapshot", "tmpl:warm", "--start", "--wait")
    assert live.returncode == 0, live.stderr
    guest(server, "tmpl", "echo later > /tmp/ram-only")
    assert api.vm("tmpl").state == "running"
    ran = guest(server, "live", "cat /tmp/ram-only /root/kept; hostname").split()
    assert ran == ["warm", "disk", "live"]
    assert [s.name for s in api.snapshots("live")] == ["warm"]
    api.delete_vm("live", force=True)
    assert server.cli("vm", "stop", "tmpl").returncode == 0
    no_memory = server.cli("vm", "create", "fast", "--from-snapshot", "tmpl:cold")
    assert no_memory.returncode == 1 and "has no memory" in no_memory.stderr, no_memory.stderr
    unreadable = server.cli("vm", "create", "fast", "--from-snapshot", "tmpl")
    assert unreadable.returncode != 0 and "SOURCE:SNAPSHOT" in unreadable.stderr
    shaped = server.cli("vm", "create", "fast", "--from-snapshot", "tmpl:warm", "--memory", "1G")
    assert shaped.returncode != 0 and "--memory cannot be given" in shaped.stderr
    assert {vm.name for vm in api.vms()} == {"tmpl"}

    # The pool keeps one copy of the snapshot's disk ready: the next create takes it.
    assert server.cli("pool", "set", "--warm-copies", "1").returncode == 0
    made = server.cli("vm", "create", "fast", "--from-snapshot", "tmpl:warm", "--start", "--wait", "--json")
    assert made.returncode == 0, made.stderr
    warm = server.data_dir / "warm" / api.vm("tmpl").id

    def ready() -> list[Path]:
        return list(warm.glob("*/*.qcow2"))

    assert wait_for(lambda: len(ready()) == 1, timeout=120), list(warm.rglob("*"))
    inode = ready()[0].stat().st_ino
    assert server.cli("vm", "create", "fast2", "--from-snapshot", "tmpl:warm").returncode == 0
    assert (server.data_dir / "vms" / api.vm("fast2").id / "disk.qcow2").stat().st_ino == inode
    assert wait_for(lambda: len(ready()) == 1 and ready()[0].stat().st_ino != inode, timeout=120)
    assert [s.name for s in api.snapshots("fast2")] == ["warm"]
    assert server.cli("pool", "set", "--warm-copies", "0").returncode == 0
    api.delete_vm("fast2", force=True)
    assert api.vm("fast").state == "running"
    # The guest's RAM is the snapshot's (a boot would have an empty /tmp), with its own name
    # and the clock of now, not of the snapshot.
    ran = guest(server, "fast", "cat /tmp/ram-only /root/kept; hostname; cat /etc/hostname; date +%s").split()
    assert ran[:4] == ["warm", "disk", "fast", "fast"]
    assert abs(int(ran[4]) - time.time()) < 30
    assert [s.name for s in api.snapshots("fast")] == ["warm"]
    # Only the first start resumes: after a stop it boots, its disk kept.
    assert server.cli("vm", "restart", "fast").returncode == 0
    assert guest(server, "fast", "cat /tmp/ram-only 2>/dev/null || echo booted; cat /root/kept").split() == [
        "booted", "disk"]
    for name in ("fast", "tmpl"):
        api.delete_vm(name, force=True)
    assert list((server.data_dir / "vms").iterdir()) == []
    assert list((server.data_dir / "launches").iterdir()) == []
    assert list((server.data_dir / "warm").iterdir()) == []  # the source's copies went with it
