"""A create-and-start on a host that lacks the VM's image answers at once: the host's agent
fetches the image from the control plane inside the create's operation, whose progress shows
the bytes on their way, and the operation then boots the VM. A create without start does the
same in a ``vm.provision`` operation that ends with the VM stopped; the SDK and the CLI follow
it, so their create returns once the VM's disk is made. A fetch that arrives damaged (the
pool's copy no longer matches its manifest's SHA-256) fails the operation and leaves nothing:
no VM, no VM directory or half-received image on the host, no claim on the host or the quota.

Each test imports an image of its own (the default image's files under another name), so no
host has it beforehand, whatever ran before.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import httpx
import pytest

from tests.cluster.conftest import Cluster
from tests.cluster.harness import HOST_NAMES
from virtpool.model.operation import Operation
from virtpool.sdk.errors import APIError, OperationFailed

_, H2, H3 = HOST_NAMES
BOOT_WAIT_S = 300
FETCHED, DAMAGED = "fetched", "damaged"
PROVISIONED, BY_CLI, DAMAGED_TOO = "provisioned", "by-cli", "damaged-too"
GONE_AT_ONCE = "gone-at-once"
VMS = ("f1", "d1", "p1", "c1", "c2", "c3", "g1")


def hear(seen: list[tuple[int, str]], op: Operation) -> None:
    """Note each (progress, message) an operation passes through, once."""
    if (op.progress, op.message or "") not in seen:
        seen.append((op.progress, op.message or ""))


def damage(pooled: Path) -> None:
    """One byte of the pool's copy of the kernel changes: its size stays, its SHA-256 no
    longer matches its manifest's."""
    with (pooled / "kernel").open("r+b") as kernel:
        kernel.seek(1 << 20)
        byte = kernel.read(1)
        kernel.seek(1 << 20)
        kernel.write(bytes([byte[0] ^ 0xFF]))


def import_copy_of_default(cluster: Cluster, name: str) -> Path:
    """Import the default image's kernel and initramfs as image ``name``; its directory in the
    control plane's store."""
    default = cluster.control.data_dir / "images" / "default"
    with cluster.api(timeout=120) as api:
        api.import_image(name, kernel=default / "vmlinux", initrd=default / "initramfs.cpio.gz")
    return cluster.control.data_dir / "images" / name


@pytest.fixture
def images(cluster: Cluster) -> Iterator[None]:
    yield
    remove(cluster, VMS, (FETCHED, DAMAGED, PROVISIONED, BY_CLI, DAMAGED_TOO))


def remove(cluster: Cluster, vms: tuple[str, ...], images: tuple[str, ...]) -> None:
    """Delete a test's VMs, then its images, through the pool; those already gone are no error."""
    with cluster.api() as api:
        for vm in vms:
            try:
                api.delete_vm(vm, force=True)
            except APIError:
                pass
        for image in images:
            try:
                api.delete_image(image)
            except APIError:
                pass


def vm_dirs(cluster: Cluster, host: str) -> set[str]:
    vms = cluster.node(host).data_dir / "vms"
    return {p.name for p in vms.iterdir()} if vms.exists() else set()


def test_a_create_answers_before_its_host_has_the_image_and_the_fetch_is_in_its_operation(
        cluster: Cluster, images: None) -> None:
    import_copy_of_default(cluster, FETCHED)
    node = cluster.node(H2)
    assert node.host is not None
    on_host = node.data_dir / "images" / FETCHED
    assert not on_host.exists()
    seen: list[tuple[int, str]] = []
    heard = partial(hear, seen)

    node.host.throttle("16mbit")  # 57 MB of image: half a minute on the way
    try:
        with cluster.api(timeout=60) as api:
            op = api.create_vm("f1", image=FETCHED, host=H2, memory_mib=128, start=True)
            assert isinstance(op, Operation)
            # The answer came while the image was still on its way to the host.
            assert not on_host.exists()
            assert op.status == "running" and op.target == "f1", op
            assert api.vm("f1").state.value == "creating"
            done = api.wait_operation(op, timeout=BOOT_WAIT_S, on_progress=heard)
    finally:
        node.host.unthrottle()
    assert done.status == "succeeded" and done.progress == 100, (done, seen, cluster.logs())
    fetching = [m for _, m in seen if m.startswith(f"fetching image '{FETCHED}' to host '{H2}': ")]
    percents = [int(m.rsplit("(", 1)[1].rstrip("%)")) for m in fetching]
    assert len([p for p in percents if 0 < p < 100]) >= 2, seen  # seen while on the way
    assert percents == sorted(percents), seen
    assert [p for p, _ in seen] == sorted(p for p, _ in seen), seen  # never backwards
    with cluster.api() as api:
        vm = api.vm("f1")
        assert (vm.host, vm.state.value) == (H2, "running")
        assert api.exec("f1", ["cat", "/proc/sys/kernel/hostname"]).exit_code == 0
    # The host kept the image, byte for byte the pool's.
    for file in ("kernel", "initrd"):
        assert (on_host / file).read_bytes() == \
            (cluster.control.data_dir / "images" / FETCHED / file).read_bytes()


def test_a_fetch_that_arrives_damaged_fails_the_create_and_leaves_nothing(
        cluster: Cluster, images: None) -> None:
    damage(import_copy_of_default(cluster, DAMAGED))
    node = cluster.node(H3)
    with cluster.api(timeout=60) as api:
        before_host = next(h for h in api.hosts() if h.name == H3)
        before_usage = api.project_info("default").usage
        dirs_before = vm_dirs(cluster, H3)
        op = api.create_vm("d1", image=DAMAGED, host=H3, memory_mib=128, start=True)
        assert isinstance(op, Operation) and op.status == "running"
        done = api.wait_operation(op, timeout=BOOT_WAIT_S, check=False)
        assert done.status == "failed", (done, cluster.logs())
        assert f"the kernel of image '{DAMAGED}' arrived damaged" in (done.error or ""), done
        assert "d1" not in [vm.name for vm in api.vms()]
        after_host = next(h for h in api.hosts() if h.name == H3)
        assert (after_host.cpus.allocated, after_host.memory_mib.allocated,
                after_host.disk_mib.allocated) == (before_host.cpus.allocated,
                                                   before_host.memory_mib.allocated,
                                                   before_host.disk_mib.allocated)
        assert api.project_info("default").usage == before_usage
    assert vm_dirs(cluster, H3) == dirs_before
    store = node.data_dir / "images"
    assert not (store / DAMAGED).exists()
    assert [p.name for p in store.iterdir() if p.name.startswith(".")] == []  # no staging left


def test_a_create_without_start_answers_before_its_host_has_the_image_and_ends_stopped(
        cluster: Cluster, images: None) -> None:
    import_copy_of_default(cluster, PROVISIONED)
    node = cluster.node(H2)
    assert node.host is not None
    on_host = node.data_dir / "images" / PROVISIONED
    assert not on_host.exists()
    body = {"name": "p1", "image": PROVISIONED, "host": H2, "memory_mib": 128, "start": False}
    seen: list[tuple[int, str]] = []
    heard = partial(hear, seen)

    node.host.throttle("16mbit")  # 57 MB of image: half a minute on the way
    try:
        # The API itself, as a script would call it: the answer must not wait for the image.
        ca = cluster.control.ca
        with httpx.Client(base_url=cluster.control.url + "/api/v1",
                          verify=ssl.create_default_context(cafile=str(ca)) if ca else True,
                          headers={"Authorization": f"Bearer {cluster.control.token}"}, timeout=20) as http:
            answer = http.post("/vms", json=body)
        assert answer.status_code == 202, answer.text
        op = Operation.model_validate(answer.json())
        assert (op.kind, op.status, op.target) == ("vm.provision", "running", "p1"), op
        assert not on_host.exists()
        with cluster.api(timeout=60) as api:
            assert api.vm("p1").state.value == "creating"
            done = api.wait_operation(op, timeout=BOOT_WAIT_S, on_progress=heard)
    finally:
        node.host.unthrottle()
    assert done.status == "succeeded" and done.progress == 100, (done, seen, cluster.logs())
    percents = [p for p, m in seen if m.startswith(f"fetching image '{PROVISIONED}' to host '{H2}': ")]
    assert len([p for p in percents if 0 < p < 100]) >= 2 and percents == sorted(percents), seen
    with cluster.api() as api:
        vm = api.vm("p1")
        assert (vm.host, vm.state.value) == (H2, "stopped")
        # Stopped, with its disk made: it starts like any VM.
        api.wait_operation(api.start_vm("p1"), timeout=BOOT_WAIT_S)
        assert api.exec("p1", ["true"]).exit_code == 0
        # Now that the host has the image, a create there is a record and a disk at once.
        again = api.create_vm("c3", image=PROVISIONED, host=H2, memory_mib=128)
        assert again.state.value == "stopped"


def test_the_cli_and_the_sdk_follow_a_create_without_start_to_its_end(
        cluster: Cluster, images: None) -> None:
    import_copy_of_default(cluster, BY_CLI)
    damage(import_copy_of_default(cluster, DAMAGED_TOO))
    made = cluster.control.cli("vm", "create", "c1", "--image", BY_CLI, "--host", H3, "--memory", "128M",
                               timeout=BOOT_WAIT_S)
    assert made.returncode == 0, (made.stdout, made.stderr)
    assert made.stdout == f"VM 'c1' created on host '{H3}' (stopped)\n", made.stdout
    assert (cluster.node(H3).data_dir / "images" / BY_CLI / "kernel").exists()
    with cluster.api(timeout=60) as api:
        assert (api.vm("c1").host, api.vm("c1").state.value) == (H3, "stopped")
        dirs_before = vm_dirs(cluster, H3)
        usage_before = api.project_info("default").usage
        with pytest.raises(OperationFailed, match=f"the kernel of image '{DAMAGED_TOO}' arrived damaged"):
            api.create_vm("c2", image=DAMAGED_TOO, host=H3, memory_mib=128)
        assert "c2" not in [vm.name for vm in api.vms()]
        assert api.project_info("default").usage == usage_before
    refused = cluster.control.cli("vm", "create", "c2", "--image", DAMAGED_TOO, "--host", H3,
                                  "--memory", "128M", timeout=BOOT_WAIT_S)
    assert refused.returncode != 0 and refused.stdout == "", (refused.stdout, refused.stderr)
    assert "arrived damaged" in refused.stderr and "nothing of it is left" in refused.stderr, refused.stderr
    assert vm_dirs(cluster, H3) == dirs_before
    assert not (cluster.node(H3).data_dir / "images" / DAMAGED_TOO).exists()


def test_a_deleted_image_leaves_no_copy_on_the_hosts_that_fetched_it(cluster: Cluster, images: None) -> None:
    import_copy_of_default(cluster, GONE_AT_ONCE)
    on_h2 = cluster.node(H2).data_dir / "images" / GONE_AT_ONCE
    with cluster.api(timeout=120) as api:
        api.create_vm("g1", image=GONE_AT_ONCE, host=H2, memory_mib=128)
        api.delete_vm("g1")
        assert on_h2.is_dir()  # the host fetched it and kept it
        api.delete_image(GONE_AT_ONCE)
        assert GONE_AT_ONCE not in [i.name for i in api.images()]
    assert not on_h2.exists()  # a host in reach drops its copy with the delete
    assert [p.name for p in on_h2.parent.iterdir() if p.name.startswith(".")] == []
