"""Bad input gets a clear error and changes nothing: no row, no disk, no process."""

from __future__ import annotations

import json
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import Server, make_server, qemu_pids


def snapshot(server: Server) -> tuple[list[str], list[str], list[int]]:
    """What a failed request must not change: VM records, VM directories, QEMU processes."""
    names = sorted(v.name for v in server.api().vms())
    dirs = sorted(p.name for p in (server.data_dir / "vms").iterdir())
    return names, dirs, qemu_pids(server.data_dir)


@pytest.fixture(scope="module")
def busy_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


@pytest.fixture(scope="module")
def base(server: Server) -> Server:
    """A pool that already has one VM, so that duplicates and port clashes can be tried."""
    # A host port below the kernel's ephemeral range, where other programs take theirs.
    server.api().create_vm("existing", ports=["30123:22"])
    return server


CLI_CASES = [
    (["Bad_Name"], "not a valid name"),
    (["../etc"], "not a valid name"),
    (["a;rm -rf x"], "not a valid name"),
    (["ok1", "--image", "nope"], "no image named 'nope'"),
    (["ok1", "--cpus", "0"], "cpus"),
    (["ok1", "--cpus", "300"], "cpus"),
    (["ok1", "--memory", "16M"], "--memory must be at least 64 MiB"),
    (["ok1", "--memory", "lots"], "cannot read memory"),
    (["ok1", "--memory", "8T"], "lacks memory"),
    (["ok1", "--disk", "10T"], "free"),
    (["ok1", "--port", "80"], "HOST:GUEST"),
    (["ok1", "--port", "30123:80"], "already forwarded to VM 'existing'"),
    (["existing"], "a VM named 'existing' exists"),
    (["ok1", "--kernel-args", "a\x01b"], "printable"),
]


@pytest.mark.parametrize(("args", "message"), CLI_CASES, ids=[" ".join(a) for a, _ in CLI_CASES])
def test_cli_refuses_and_changes_nothing(base: Server, args: list[str], message: str) -> None:
    before = snapshot(base)
    result = base.cli("vm", "create", *args, "--start", "--wait")
    assert result.returncode == 1, result.stdout + result.stderr
    assert message in " ".join(result.stderr.split()), result.stderr
    assert "Traceback" not in result.stderr
    assert snapshot(base) == before


def test_more_vcpus_than_the_host_has_is_refused(base: Server) -> None:
    before = snapshot(base)
    cpus = base.api().host().cpus + 1
    result = base.cli("vm", "create", "ok1", "--cpus", str(cpus))
    assert result.returncode == 1
    assert f"too few CPUs (needs {cpus}, the largest has {cpus - 1})" in " ".join(result.stderr.split())
    assert snapshot(base) == before


def test_host_port_used_by_another_program_is_refused(base: Server, busy_port: int) -> None:
    before = snapshot(base)
    result = base.cli("vm", "create", "ok1", "--port", f"{busy_port}:80")
    assert result.returncode == 1
    assert "in use by another program" in " ".join(result.stderr.split())
    assert snapshot(base) == before


API_CASES = [
    ({"name": "x/y"}, 422),
    ({"name": "ok1", "cpus": "two"}, 422),
    ({"name": "ok1", "unknown": 1}, 422),
    ({"name": "ok1", "ports": [{"host": 70000, "guest": 1}]}, 422),
    ({"name": "ok1", "ports": [{"host": 5000, "guest": 1}, {"host": 5000, "guest": 2}]}, 422),
    ({"name": "ok1", "image": "missing"}, 404),
    ({"name": "existing"}, 409),
    ({"name": "ok1", "memory_mib": 10 * 1024 * 1024}, 409),
    ({"name": "ok1", "kernel_args": "x" * 5000}, 422),
]


@pytest.mark.parametrize(("body", "status"), API_CASES, ids=[json.dumps(b)[:40] for b, _ in API_CASES])
def test_api_answers_problem_json_and_changes_nothing(base: Server, body: dict, status: int) -> None:
    before = snapshot(base)
    api = base.api()
    response = httpx.post(f"{api.url}/api/v1/vms", json=body,
                          headers={"Authorization": f"Bearer {api.token}"})
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["status"] == status and problem["detail"]
    assert snapshot(base) == before


@pytest.mark.parametrize("raw", [b"{not json", b"[]", b"null", b'{"name": ' + b'"a' * 100000 + b'"}'])
def test_malformed_bodies_are_4xx(base: Server, raw: bytes) -> None:
    before = snapshot(base)
    api = base.api()
    response = httpx.post(f"{api.url}/api/v1/vms", content=raw, headers={
        "Authorization": f"Bearer {api.token}", "Content-Type": "application/json"})
    assert 400 <= response.status_code < 500, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert snapshot(base) == before


def test_actions_in_the_wrong_state_are_409(base: Server) -> None:
    api = base.api()
    for action in ("stop", "pause", "resume", "restart"):
        response = httpx.post(f"{api.url}/api/v1/vms/existing/{action}",
                              headers={"Authorization": f"Bearer {api.token}"})
        assert response.status_code == 409, (action, response.text)
        assert "stopped" in response.json()["detail"]
    assert api.vm("existing").state == "stopped"
    missing = httpx.post(f"{api.url}/api/v1/vms/ghost/start", headers={"Authorization": f"Bearer {api.token}"})
    assert missing.status_code == 404


# -- a guest that never boots ------------------------------------------------------------------


def make_silent_initrd(target: Path) -> None:
    """An initramfs whose /init never starts a guest agent: the guest "never boots"."""
    root = target.parent / "silent-root"
    (root / "bin").mkdir(parents=True)
    subprocess.run(["cp", "/bin/busybox", str(root / "bin" / "busybox")], check=True)
    init = root / "init"
    init.write_text("#!/bin/busybox sh\n/bin/busybox echo silent guest up\n/bin/busybox sleep 100000\n")
    init.chmod(0o755)
    files = subprocess.run(["find", "."], cwd=root, capture_output=True, check=True).stdout
    packed = subprocess.run(["cpio", "-o", "-H", "newc", "--quiet"], cwd=root, input=files,
                            capture_output=True, check=True).stdout
    target.write_bytes(packed)


@pytest.fixture(scope="module")
def impatient(tmp_path_factory: pytest.TempPathFactory, image_cache: Path) -> Iterator[Server]:
    srv = make_server(tmp_path_factory, image_cache, "impatient", boot_timeout=12.0)
    yield srv
    srv.cleanup()


def test_guest_that_never_answers_becomes_error_with_the_console_tail(
    impatient: Server, tmp_path: Path
) -> None:
    initrd = tmp_path / "silent.cpio"
    make_silent_initrd(initrd)
    kernel = impatient.data_dir / "images" / "default" / "vmlinux"
    imported = impatient.cli("image", "import", "silent", "--kernel", str(kernel), "--initrd", str(initrd))
    assert imported.returncode == 0, imported.stderr

    result = impatient.cli("vm", "create", "mute", "--image", "silent", "--start", "--wait")
    assert result.returncode == 1
    vm = impatient.api().vm("mute")
    assert vm.state == "error"
    assert "did not answer its guest agent" in (vm.error or "")
    assert "silent guest up" in (vm.error or "")  # the tail of the serial log
    assert qemu_pids(impatient.data_dir) == []
    assert impatient.cli("vm", "delete", "mute").returncode == 0
    assert list((impatient.data_dir / "vms").iterdir()) == []


def test_guest_whose_kernel_panics_becomes_error_at_once(impatient: Server) -> None:
    result = impatient.cli("vm", "create", "panicky", "--kernel-args", "rdinit=/nonexistent",
                           "--start", "--wait")
    assert result.returncode == 1
    vm = impatient.api().vm("panicky")
    assert vm.state == "error"
    assert "exited with code" in (vm.error or "") and "while the guest booted" in (vm.error or "")
    assert qemu_pids(impatient.data_dir) == []
    impatient.api().delete_vm("panicky")
