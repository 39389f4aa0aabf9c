"""A full data disk, as the fault: the data dir on a 300 MiB loop-mounted ext4 (no blocks
reserved for root, so that root fills it too; not tmpfs, whose pages are charged to QEMU).

A guest fills its disk until the host's disk is full to the last block: QEMU pauses it, the
agent's feed says so (``vm.io_error``; the feed keeps room of its own for a full disk), and
the control plane shows the VM paused with the reason io-error, with an event. Root then
takes every block left: delete --force, stop, project create and token create still work (the
database keeps room inside its own files, see control/store/room.py); an image import is a
507 that says what to free (and keeps nothing); once room returns the agent resumes the guest
by itself (``vm.resumed``) and it runs again. Nothing is left behind: no QEMU, no VM dir, no
staging dir, no mount, no loop device.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import Server, passable, qemu_pids, wait_for

FS_MIB = 300


@pytest.fixture
def full_disk_server(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory,
                     image_cache: Path) -> Iterator[Server]:
    backing = tmp_path / "ha-fs.img"
    # A short path: the VMs' sockets live under it, and a socket's path has 107 bytes at most.
    mount = tmp_path_factory.mktemp("ha-mnt")
    subprocess.run(["truncate", "-s", f"{FS_MIB}M", str(backing)], check=True)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-m", "0", str(backing)], check=True)
    device = subprocess.run(["losetup", "--find", "--show", str(backing)], check=True,
                            capture_output=True, text=True).stdout.strip()
    subprocess.run(["mount", device, str(mount)], check=True)
    server = None
    try:
        data_dir = mount  # its server log goes next to it, off the full disk
        (data_dir / "images").mkdir(parents=True)
        shutil.copytree(image_cache / "default", data_dir / "images" / "default")
        passable(data_dir)
        server = Server(data_dir, boot_timeout=240.0)  # two boots at once on a busy machine
        server.start()  # (a start that fails still has a process to stop below)
        yield server
    finally:
        try:
            if server is not None:
                server.cleanup()
        finally:
            if server is not None:
                server.stop()
            left = qemu_pids(mount)
            for pid in left:
                os.kill(pid, signal.SIGKILL)
            subprocess.run(["umount", str(mount)], check=True)
            subprocess.run(["losetup", "-d", device], check=True)
    assert left == [], "QEMU outlived the cleanup"
    assert str(mount) not in Path("/proc/mounts").read_text(), "the loop filesystem is still mounted"
    if not wait_for(lambda: subprocess.run(["losetup", "-j", str(backing)], capture_output=True,
                                           text=True).stdout == "", timeout=10):
        # A process that made a mount namespace while the filesystem was mounted (`ip netns
        # exec`, passt's sandbox) holds a copy of the mount, and so the loop device, until it
        # ends; `losetup -d` marked the device to go then (autoclear). None may be ours.
        held_by = [pid for pid in mount_holders(mount) if str(mount) in " ".join(cmdline(pid))]
        assert held_by == [], f"processes of this test still hold {mount}: {held_by}"
        name = Path(device).name
        assert Path(f"/sys/block/{name}/loop/autoclear").read_text().strip() == "1", "loop device left"


def mount_holders(mount: Path) -> list[int]:
    """Processes whose mount namespace still has ``mount``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if f" {mount} " in (entry / "mountinfo").read_text():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_text().split("\0")
    except OSError:
        return []


def fill(path: Path, leave_mib: int) -> None:
    """Write ``path`` until the filesystem has ``leave_mib`` MiB free (or is full)."""
    chunk = b"\xa5" * (1 << 20)
    with path.open("ab") as out:
        while True:
            info = os.statvfs(path.parent)
            if info.f_bfree * info.f_frsize <= leave_mib << 20:
                return
            try:
                out.write(chunk)
                out.flush()
            except OSError as err:
                if err.errno == errno.ENOSPC:
                    return
                raise


@pytest.mark.timeout(1200)
def test_a_full_data_disk_pauses_the_guest_visibly_and_the_platform_still_works(
    full_disk_server: Server, tmp_path: Path
) -> None:
    server = full_disk_server
    api = server.api()
    data = server.data_dir
    api.create_vm("filler", disk_mib=150, start=True)
    api.create_vm("other", disk_mib=16, start=True)
    for name in ("filler", "other"):
        assert api.wait_vm(name).state == "running", api.vm(name).error
    fill(data / "ballast-1", leave_mib=60)

    # The guest writes more than there is: QEMU pauses it, and virtpool says so.
    api.exec("filler", ["sh", "-c", "dd if=/dev/zero of=/dev/vda bs=1M count=140 conv=fsync "
                        ">/dev/null 2>&1 &"])
    assert wait_for(lambda: api.vm("filler").state == "paused", timeout=300), api.vm("filler")
    paused = api.vm("filler")
    assert (paused.error or "").startswith("io-error") and "full" in paused.error
    events = [e.message for e in api.events(vm="filler", limit=1000)]
    assert any("was paused by a disk error" in m and "full" in m for m in events), events
    assert any("is paused: io-error" in m for m in events), events
    shown = server.cli("vm", "show", "filler")
    assert shown.returncode == 0 and "paused" in shown.stdout and "io-error" in shown.stdout, shown.stdout
    # The bystander on the same disk is not paused by another VM's error.
    assert api.vm("other").state == "running"

    # Now to the very last block, as root: the platform still records what it does (its
    # database keeps room inside its own files).
    fill(data / "ballast-2", leave_mib=0)
    info = os.statvfs(data)
    # (ext4 keeps a few MiB of its own for metadata, which no write of ours gets)
    assert info.f_bavail == 0 and info.f_bfree * info.f_frsize <= 4 << 20
    assert server.cli("project", "create", "full-p").returncode == 0
    token = server.cli("token", "create", "--name", "full-t", "--role", "viewer", "--project", "full-p")
    assert token.returncode == 0, token.stderr
    stopped = server.cli("vm", "stop", "other", "--timeout", "5")
    assert stopped.returncode == 0, stopped.stderr
    assert server.cli("vm", "delete", "other", "--force").returncode == 0, "delete --force refused"

    # An import that cannot fit: a 507 that says what to free; nothing kept.
    big = tmp_path / "big.raw"
    content = bytearray(96 << 20)
    content[510:512] = b"\x55\xaa"
    big.write_bytes(bytes(content))
    kernel = data / "images" / "default" / "vmlinux"
    with kernel.open("rb") as k, big.open("rb") as d:
        response = httpx.post(f"{api.url}/api/v1/images", data={"name": "toobig"},
                              files={"kernel": ("kernel", k), "disk": ("disk", d)},
                              headers={"Authorization": f"Bearer {api.token}"}, timeout=120)
    assert response.status_code == 507, response.text
    assert "image delete" in response.json()["hint"]
    assert sorted(p.name for p in (data / "images").iterdir()) == ["default"]

    # Room returns: the guest resumes by itself, and an event says it runs.
    (data / "ballast-1").unlink()
    (data / "ballast-2").unlink()
    assert wait_for(lambda: api.vm("filler").state == "running", timeout=120), api.vm("filler")
    assert api.vm("filler").error is None
    assert any("is running" in e.message for e in api.events(vm="filler", limit=1000)[-3:])
    # It really runs: its guest agent answers (a paused guest's could not; the call would time
    # out). What it runs may fail: the dd above wrote zeros over the guest's own disk.
    answered = api.exec("filler", ["true"], timeout=60)
    assert answered.exit_code == 0 or "Structure needs cleaning" in answered.stderr, answered
    api.delete_vm("filler", force=True)
    assert os.listdir(data / "vms") == []
    assert api.vms() == []
    assert qemu_pids(data) == []
    assert "Traceback" not in server.log.read_text()
