"""A data dir deep enough that its VMs' socket paths come near the kernel's 108-byte limit for
a unix socket: the default network still works. passt cut such a path short without a word
and bound another name, so QEMU's NIC reached nothing (no ARP answer, no forward)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from tests.conftest import make_server, served_through_forward

SUN_PATH_MAX = 107  # bytes of a unix socket path, without its terminating NUL
VM_ID_CHARS = 32


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_a_vm_of_a_deep_data_dir_has_its_network(tmp_path_factory: pytest.TempPathFactory,
                                                 image_cache: Path) -> None:
    # A name that puts <data>/vms/<id>/passt.sock at 105 bytes: QEMU's own sockets
    # (qmp.sock, qga.sock) still fit, passt's did not.
    fixed = len(f"{tmp_path_factory.getbasetemp()}/0/vms/{'x' * VM_ID_CHARS}/passt.sock")
    length = SUN_PATH_MAX - 2 - fixed
    assert length > 4, "the test's base temp dir is too deep to run this test"
    server = make_server(tmp_path_factory, image_cache, "deep" + "d" * (length - 4))
    try:
        api = server.api()
        forwarded = free_port()
        api.create_vm("deep", ports=[f"{forwarded}:8080"], start=True)
        vm = api.wait_vm("deep")
        assert vm.state == "running", vm.error
        assert len(str(server.data_dir / "vms" / vm.id / "passt.sock")) == SUN_PATH_MAX - 2
        assert served_through_forward(api, "deep", forwarded, "from-deep") == "from-deep\n"
    finally:
        server.cleanup()
