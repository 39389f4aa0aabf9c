"""Image import as the attack: a host secret offered as an image file must never become one.

Through the real CLI and API against a real `virtpool up`: a symlink to /etc/shadow as
--disk and --initrd, the secret's bytes uploaded directly (a client that followed the link),
and a block device as a disk. Every refusal is a 4xx with a message, and nothing is left in
images/ (not even a hidden staging directory).
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import Server
from virtpool.node.sandbox.users import IMAGE_GID

SECRET = Path("/etc/shadow")


def images_listing(server: Server) -> list[str]:
    """Everything under images/, hidden entries included."""
    root = server.data_dir / "images"
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def default_kernel(server: Server) -> Path:
    return server.data_dir / "images" / "default" / "vmlinux"


@pytest.fixture
def shadow_link(tmp_path: Path) -> Path:
    link = tmp_path / "disk.img"
    link.symlink_to(SECRET)
    return link


@pytest.mark.parametrize("field", ["--disk", "--initrd"])
def test_a_symlink_to_etc_shadow_is_refused_and_nothing_is_copied(
    server: Server, shadow_link: Path, field: str
) -> None:
    before = images_listing(server)
    result = server.cli("image", "import", "stolen", "--kernel", str(default_kernel(server)),
                        field, str(shadow_link))
    assert result.returncode == 1, result.stdout
    assert "is a symlink" in result.stderr and "Traceback" not in result.stderr
    assert images_listing(server) == before
    assert "stolen" not in [i.name for i in server.api().images()]


@pytest.mark.parametrize("field", ["disk", "initrd"])
def test_the_secrets_bytes_uploaded_directly_are_refused_by_the_server(server: Server, field: str) -> None:
    """A client that followed the link anyway: the server checks what each file is."""
    api = server.api()
    before = images_listing(server)
    files = {"kernel": ("kernel", default_kernel(server).read_bytes()), field: (field, SECRET.read_bytes())}
    response = httpx.post(f"{api.url}/api/v1/images", data={"name": "stolen"}, files=files,
                          headers={"Authorization": f"Bearer {api.token}"}, timeout=60)
    assert response.status_code == 422, response.text
    problem = response.json()
    assert ("initramfs" in problem["detail"]) if field == "initrd" else ("not a whole number" in problem["detail"]
                                                                         or "partition table" in problem["detail"])
    assert problem.get("hint")
    assert images_listing(server) == before


@pytest.fixture
def block_device(tmp_path: Path) -> Iterator[Path]:
    backing = tmp_path / "backing.img"
    backing.write_bytes(bytes(1024 * 1024))
    device = subprocess.run(["losetup", "--find", "--show", str(backing)], check=True,
                            capture_output=True, text=True).stdout.strip()
    try:
        yield Path(device)
    finally:
        subprocess.run(["losetup", "-d", device], check=True)


def test_a_block_device_as_disk_gets_a_clear_refusal(server: Server, block_device: Path) -> None:
    before = images_listing(server)
    result = server.cli("image", "import", "device", "--kernel", str(default_kernel(server)),
                        "--disk", str(block_device))
    assert result.returncode == 1
    assert "is a block device" in result.stderr and "Traceback" not in result.stderr
    assert images_listing(server) == before


def test_imported_files_belong_to_the_platform_and_no_other_host_user_reads_them(
    server: Server, tmp_path: Path
) -> None:
    image = server.data_dir / "images" / "default"
    result = server.cli("image", "import", "private", "--kernel", str(image / "vmlinux"),
                        "--initrd", str(image / "initramfs.cpio.gz"), "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["name"] == "private"
    imported = server.data_dir / "images" / "private"
    for path in [imported, *imported.iterdir()]:
        info = path.lstat()
        assert (info.st_uid, info.st_gid) == (0, IMAGE_GID), path
        assert stat.S_IMODE(info.st_mode) == (0o750 if path.is_dir() else 0o640), path
    # Nobody outside the image group opens them; the VM users (in it) do.
    nobody = subprocess.run(["cat", str(imported / "kernel")], user=65534, group=65534, extra_groups=[],
                            capture_output=True)
    assert nobody.returncode != 0 and b"Permission denied" in nobody.stderr
    api = server.api()
    api.create_vm("from-private", image="private", start=True)
    try:
        booted = api.wait_vm("from-private")
        assert booted.state == "running", booted.error
    finally:
        api.delete_vm("from-private", force=True)
    assert server.cli("image", "delete", "private").returncode == 0
    assert not imported.exists()
    assert "Traceback" not in server.log.read_text()
    assert os.listdir(server.data_dir / "vms") == []
