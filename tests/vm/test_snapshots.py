"""Snapshots of real VMs: disk snapshots of stopped and running VMs, memory snapshots that bring
the running state back into a running VM, and the refusals that change nothing."""

from __future__ import annotations

import json

from tests.conftest import Server


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


def test_clones_copy_a_stopped_disk_or_a_snapshot_and_are_vms_of_their_own(server: Server) -> None:
    api = server.api()
    api.create_vm("origin", start=True)
    assert api.wait_vm("origin").state == "running"
    guest(server, "origin", "echo v1 > /root/file; sync")
    assert server.cli("vm", "snapshot", "create", "origin", "v1").returncode == 0
    guest(server, "origin", "echo v2 > /root/file; sync")

    busy = server.cli("vm", "clone", "origin", "twin")  # a running disk is not copied
    assert busy.returncode == 1 and "a clone copies a stopped disk" in busy.stderr
    from_snapshot = server.cli("vm", "clone", "origin", "old", "--snapshot", "v1", "--json")
    assert from_snapshot.returncode == 0, from_snapshot.stderr
    assert server.cli("vm", "stop", "origin").returncode == 0
    twin = server.cli("vm", "clone", "origin", "twin", "--json")
    assert twin.returncode == 0, twin.stderr
    assert server.cli("vm", "clone", "origin", "twin").returncode == 1  # the name is taken

    origin = api.vm("origin")
    for name, expected in (("twin", "v2"), ("old", "v1")):
        clone = api.vm(name)
        assert clone.id != origin.id and clone.state == "stopped"
        api.start_vm(name)
        assert api.wait_vm(name).state == "running"
        assert guest(server, name, "cat /root/file; hostname").split() == [expected, name]
    # Independent disks: what the twin writes, the origin does not see.
    guest(server, "twin", "echo twin > /root/file; sync")
    api.start_vm("origin")
    assert api.wait_vm("origin").state == "running"
    assert guest(server, "origin", "cat /root/file") == "v2\n"
    for name in ("twin", "old", "origin"):
        api.delete_vm(name, force=True)
    assert list((server.data_dir / "vms").iterdir()) == []
