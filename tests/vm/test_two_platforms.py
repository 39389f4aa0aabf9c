"""Two platforms on one machine (two `virtpool up`, two data dirs), as a new user would run them:
their VMs run as different uids, and one platform's QEMU cannot open the other's disk."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Server, make_server


def qemu_uid(server: Server, name: str) -> int:
    run_dir = server.data_dir / "vms" / server.api().vm(name).id
    pid = int((run_dir / "qemu.pid").read_text())
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise AssertionError(f"no Uid line for QEMU {pid}")


@pytest.fixture(scope="module")
def platforms(tmp_path_factory: pytest.TempPathFactory, image_cache: Path) -> Iterator[tuple[Server, Server]]:
    one = make_server(tmp_path_factory, image_cache, "plat-one")
    two = make_server(tmp_path_factory, image_cache, "plat-two")
    yield one, two
    for server in (one, two):
        server.cleanup()


def test_one_platforms_qemu_cannot_open_the_other_platforms_disk(platforms: tuple[Server, Server]) -> None:
    one, two = platforms
    for server in platforms:
        server.api().create_vm("first", start=True)
    for server in platforms:
        assert server.api().wait_vm("first").state == "running"
    uid_one, uid_two = qemu_uid(one, "first"), qemu_uid(two, "first")
    assert uid_one != uid_two, "the first VMs of two platforms share a uid"
    ranges = [json.loads((s.data_dir / "uid-range").read_text()) for s in platforms]
    assert ranges[0]["index"] != ranges[1]["index"]
    for server, uid, rng in ((one, uid_one, ranges[0]), (two, uid_two, ranges[1])):
        assert rng["first_uid"] <= uid < rng["first_uid"] + rng["size"]

    probe = ["python3", "-c", "import sys; open(sys.argv[1], 'r+b').read(1)"]
    own = one.data_dir / "vms" / one.api().vm("first").id / "disk.qcow2"
    theirs = two.data_dir / "vms" / two.api().vm("first").id / "disk.qcow2"
    as_one = {"user": uid_one, "group": uid_one, "extra_groups": []}
    mine = subprocess.run([*probe, str(own)], capture_output=True, text=True, **as_one)
    assert mine.returncode == 0, mine.stderr  # the probe itself works as that user
    other = subprocess.run([*probe, str(theirs)], capture_output=True, text=True, **as_one)
    assert other.returncode != 0 and "PermissionError: [Errno 13]" in other.stderr


def test_a_restarted_platform_keeps_its_range(platforms: tuple[Server, Server]) -> None:
    one, _ = platforms
    before = (one.data_dir / "uid-range").read_text()
    uid = qemu_uid(one, "first")
    one.stop()
    one.start()
    assert (one.data_dir / "uid-range").read_text() == before
    assert one.api().wait_vm("first").state == "running"
    assert qemu_uid(one, "first") == uid
    ran = one.cli("vm", "exec", "first", "--", "true")
    assert ran.returncode == 0, ran.stderr
