"""Files a VM's user can write, planted as the attack: the platform must neither stall nor be fooled.

A QEMU taken over by its guest runs as the VM's user, who owns the VM's run dir. As that uid,
with `virtpool up` down, every file the root-side code reads or connects to (qemu.pid,
serial.log, qemu.log and the four sockets) is replaced by a FIFO, by a symlink to a host file
or to another VM's socket, or by a huge (sparse) file. `virtpool up` must then start and
answer, and afterwards there is no QEMU without a running record and no running record
without a QEMU; nothing on the host outside the run dir changed.
"""

from __future__ import annotations

import hashlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.conftest import Server, make_server, qemu_pids

VM_FILES = ("qemu.pid", "serial.log", "qemu.log", "qmp.sock", "qga.sock", "events.sock", "console.sock")
SECRET = Path("/etc/shadow")


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory, image_cache: Path) -> Iterator[Server]:
    srv = make_server(tmp_path_factory, image_cache, "planted")
    yield srv
    srv.cleanup()
    assert qemu_pids(srv.data_dir) == []


def as_uid(uid: int, script: str, *args: str) -> None:
    subprocess.run(["/bin/sh", "-ec", script, "sh", *args], check=True, user=uid, group=uid,
                   extra_groups=[], timeout=30)


def plant(kind: str, files: tuple[str, ...], run_dir: Path, uid: int, other_socket: Path) -> None:
    for name in files:
        target = str(run_dir / name)
        if kind == "fifo":
            as_uid(uid, 'rm -f "$1"; mkfifo "$1"', target)
        elif kind == "symlink":
            points_to = str(other_socket) if name.endswith(".sock") else str(SECRET)
            as_uid(uid, 'rm -f "$1"; ln -s "$2" "$1"', target, points_to)
        else:  # huge: a sparse terabyte
            as_uid(uid, 'rm -f "$1"; truncate -s 1T "$1"', target)


def consistent(server: Server) -> None:
    """Every QEMU has a running record and every running record a QEMU; nothing else left."""
    api = server.api()
    vms = {vm.id: vm for vm in api.vms(all_projects=True)}
    pids = qemu_pids(server.data_dir)
    owners = set()
    for pid in pids:
        cmdline = psutil.Process(pid).cmdline()
        owner = next(vm_id for vm_id in vms if any(f"/vms/{vm_id}/" in a for a in cmdline))
        owners.add(owner)
        assert vms[owner].state in ("running", "paused"), (vms[owner].name, vms[owner].state)
    for vm in vms.values():
        if vm.state in ("running", "paused", "starting", "stopping"):
            assert vm.id in owners, f"{vm.name} is {vm.state} with no QEMU"
    assert len(pids) == len(owners)


@pytest.mark.parametrize(("kind", "files"), [
    ("fifo", ("qemu.pid",)), ("fifo", VM_FILES), ("symlink", VM_FILES), ("huge", VM_FILES),
], ids=["pidfile-fifo", "fifo", "symlink", "huge"])
def test_planted_files_in_a_run_dir_do_not_stall_or_fool_a_restarted_platform(
    planted: Server, kind: str, files: tuple[str, ...]
) -> None:
    api = planted.api()
    for name in ("victim", "bystander"):
        if name not in {vm.name for vm in api.vms()}:
            api.create_vm(name)
        if api.vm(name).state != "running":
            api.start_vm(name)
            started = api.wait_vm(name)
            assert started.state == "running", started.error
    victim, bystander = api.vm("victim"), api.vm("bystander")
    run_dir = planted.data_dir / "vms" / victim.id
    uid = run_dir.stat().st_uid
    assert uid != 0
    secret_before = hashlib.sha256(SECRET.read_bytes()).hexdigest()
    secret_stat = SECRET.stat()

    planted.stop()
    plant(kind, files, run_dir, uid, planted.data_dir / "vms" / bystander.id / "qmp.sock")
    planted.start()  # fails the test if the API does not come up

    api = planted.api()
    assert {vm.name for vm in api.vms()} == {"victim", "bystander"}
    consistent(planted)
    assert api.vm("bystander").state == "running"
    assert api.exec("bystander", ["echo", "fine"]).stdout == "fine\n"
    state = api.vm("victim").state
    if files == ("qemu.pid",):  # only its pidfile was untrustworthy: the QEMU is found by argv
        assert state == "running"
        assert api.exec("victim", ["echo", "fine"]).stdout == "fine\n"
    else:  # its sockets were replaced: a QEMU that cannot be controlled is stopped
        assert state == "crashed", state
    # Reading the console log is refused, not followed or blocked on.
    logs = planted.cli("vm", "logs", "victim")
    assert "Traceback" not in logs.stderr
    # The host file the links pointed to is untouched (not truncated, chowned or chmodded).
    assert hashlib.sha256(SECRET.read_bytes()).hexdigest() == secret_before
    after = SECRET.stat()
    assert (after.st_uid, after.st_gid, after.st_mode) == (secret_stat.st_uid, secret_stat.st_gid, secret_stat.st_mode)
    # A crashed victim starts again: the start clears what was planted.
    if state == "crashed":
        api.start_vm("victim")
        assert api.wait_vm("victim").state == "running"
        consistent(planted)
    assert "Traceback" not in planted.log.read_text()
