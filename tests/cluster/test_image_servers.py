"""Two `virtpool server` processes on one PostgreSQL share one set of images: an image
imported through the cluster's control plane (A) is listed and shown by a second server (B),
which holds none of its bytes; a VM created through B on a host that lacks the image boots, B
fetching the bytes from A first (over the pool's mutual TLS, SHA-256 checked, then kept), with
that fetch in the create's operation. A copy damaged on A's disk fails the create and B keeps
nothing; with A down, B says which server to wait for; a delete through B removes A's copy in
A's next sync round; and an image deleted and imported again with other bytes reaches a host
that held the old ones.

B runs beside the session's cluster (same database, same CA); each test imports an image of
its own, so no server or host has it beforehand.
"""

from __future__ import annotations

import signal
import ssl
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import httpx
import pytest

from tests.cluster.conftest import Cluster, Node, server_node
from tests.cluster.harness import HOST_NAMES
from tests.cluster.test_image_fetch import damage, hear, remove
from tests.conftest import wait_for

_, H2, H3 = HOST_NAMES
BOOT_WAIT_S = 300
PRUNE_WAIT_S = 120  # the sync round runs every 10 s; generous for a busy machine
IMAGES = ("shown", "fetched-by-b", "damaged-on-a", "a-is-down", "deleted-by-b", "imported-again")
VMS = ("b1", "b2", "b3", "b4", "b5")


@pytest.fixture(scope="module")
def second(cluster: Cluster) -> Iterator[Node]:
    """Server B: a control plane only, on the cluster's database, with a store of its own."""
    node = server_node(cluster.lab, "cp-images-b", cluster.db_url, first=cluster.control)
    node.token = cluster.control.token
    node.start()
    yield node
    if node.proc is not None and node.proc.poll() is None:
        node.kill(signal.SIGTERM)


@pytest.fixture
def tidy(cluster: Cluster, second: Node) -> Iterator[None]:
    yield
    if cluster.control.proc is None or cluster.control.proc.poll() is not None:
        cluster.control.start()  # a test stopped A: the rest of the session needs it
        assert wait_for(lambda: all(h.state == "up" for h in cluster.api().hosts() if h.name in HOST_NAMES),
                        120), cluster.logs()
    remove(cluster, VMS, IMAGES)


def default_files(cluster: Cluster) -> tuple[Path, Path]:
    default = cluster.control.data_dir / "images" / "default"
    return default / "vmlinux", default / "initramfs.cpio.gz"


def import_through_a(cluster: Cluster, name: str, initrd: Path | None = None) -> Path:
    """Import the default image's files as ``name`` through A; its directory in A's store."""
    kernel, default_initrd = default_files(cluster)
    with cluster.api(timeout=120) as api:
        api.import_image(name, kernel=kernel, initrd=initrd or default_initrd)
    return cluster.control.data_dir / "images" / name


def staging_left(store: Path) -> list[str]:
    return [p.name for p in store.iterdir() if p.name.startswith(".")] if store.exists() else []


def test_an_image_imported_through_one_server_is_listed_and_shown_by_the_other(
        cluster: Cluster, second: Node, tidy: None) -> None:
    import_through_a(cluster, "shown")
    with cluster.api() as a, second.api() as b:
        assert "shown" in [i.name for i in b.images()]
        shown = b.image("shown")
        assert shown == a.image("shown")
        assert shown.kernel is not None and shown.initrd is not None
    assert not (second.data_dir / "images" / "shown").exists()  # B lists it without its bytes


def test_a_servers_image_files_are_refused_to_callers_that_are_not_a_control_plane(
        cluster: Cluster, second: Node, tidy: None) -> None:
    import_through_a(cluster, "shown")
    join_a = (cluster.control.data_dir / "join.url").read_text().strip()
    pki = cluster.node(H2).data_dir / "pki"
    url = f"{join_a}/agent/v1/images/shown/files/kernel"
    # No certificate, then an agent's own (of the pool CA, but not a control plane's).
    for cert in (None, (str(pki / "agent.crt"), str(pki / "agent.key"))):
        context = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        if cert is not None:
            context.load_cert_chain(*cert)
        with httpx.Client(verify=context, timeout=30) as http:
            answer = http.get(url)
        assert answer.status_code == 401, (cert, answer.status_code, answer.text[:200])
        assert "served to the pool's control planes only" in answer.json()["detail"]


def test_a_vm_created_through_the_other_server_boots_on_a_host_that_lacks_the_image(
        cluster: Cluster, second: Node, tidy: None) -> None:
    on_a = import_through_a(cluster, "fetched-by-b")
    on_b = second.data_dir / "images" / "fetched-by-b"
    on_host = cluster.node(H2).data_dir / "images" / "fetched-by-b"
    assert not on_b.exists() and not on_host.exists()
    seen: list[tuple[int, str]] = []
    with second.api(timeout=60) as b:
        op = b.create_vm("b1", image="fetched-by-b", host=H2, memory_mib=128, start=True)
        done = b.wait_operation(op, timeout=BOOT_WAIT_S, check=False, on_progress=partial(hear, seen))
        assert done.status == "succeeded", (done, seen, cluster.logs())
        assert (b.vm("b1").host, b.vm("b1").state.value) == (H2, "running")
        assert b.exec("b1", ["cat", "/proc/sys/kernel/hostname"]).exit_code == 0
    # B fetched the bytes from A, then sent them to the host; both in the operation, in order.
    from_a = [p for p, m in seen if m.startswith("fetching image 'fetched-by-b' to this server from https://")]
    to_host = [p for p, m in seen if m.startswith(f"fetching image 'fetched-by-b' to host '{H2}': ")]
    assert from_a and to_host and max(from_a) <= min(to_host), seen
    assert [p for p, _ in seen] == sorted(p for p, _ in seen), seen
    # B keeps its copy, byte for byte A's, and so does the host.
    for file in ("kernel", "initrd"):
        assert (on_b / file).read_bytes() == (on_a / file).read_bytes()
        assert (on_host / file).read_bytes() == (on_a / file).read_bytes()


def test_a_copy_damaged_on_the_holder_fails_the_create_and_nothing_is_kept(
        cluster: Cluster, second: Node, tidy: None) -> None:
    damage(import_through_a(cluster, "damaged-on-a"))
    store = second.data_dir / "images"
    with second.api(timeout=60) as b:
        op = b.create_vm("b2", image="damaged-on-a", host=H3, memory_mib=128, start=True)
        done = b.wait_operation(op, timeout=BOOT_WAIT_S, check=False)
        assert done.status == "failed", (done, cluster.logs())
        assert "the kernel of image 'damaged-on-a' arrived damaged" in (done.error or ""), done
        assert "b2" not in [vm.name for vm in b.vms()]
    assert not (store / "damaged-on-a").exists() and staging_left(store) == []
    assert not (cluster.node(H3).data_dir / "images" / "damaged-on-a").exists()


def test_with_the_only_holder_down_the_other_server_says_which_to_wait_for(
        cluster: Cluster, second: Node, tidy: None) -> None:
    import_through_a(cluster, "a-is-down")
    join_a = (cluster.control.data_dir / "join.url").read_text().strip()
    cluster.control.kill(signal.SIGTERM)
    with second.api(timeout=60) as b:
        assert "a-is-down" in [i.name for i in b.images()]
        op = b.create_vm("b3", image="a-is-down", host=H2, memory_mib=128, start=True)
        done = b.wait_operation(op, timeout=BOOT_WAIT_S, check=False)
        assert done.status == "failed", (done, cluster.logs())
        assert "image 'a-is-down' is not on this server, and no server holding it answered" in (done.error or ""), done
        assert f"retry when the server at {join_a} is back" in (done.error or ""), done
        assert "b3" not in [vm.name for vm in b.vms()]
    assert not (second.data_dir / "images" / "a-is-down").exists()
    assert staging_left(second.data_dir / "images") == []


def test_a_delete_through_the_other_server_removes_the_holders_copy(
        cluster: Cluster, second: Node, tidy: None) -> None:
    on_a = import_through_a(cluster, "deleted-by-b")
    with second.api() as b:
        b.delete_image("deleted-by-b")
        assert "deleted-by-b" not in [i.name for i in b.images()]
    with cluster.api() as a:
        assert "deleted-by-b" not in [i.name for i in a.images()]
    assert wait_for(lambda: not on_a.exists(), PRUNE_WAIT_S), cluster.logs()


def test_an_image_imported_again_with_other_bytes_reaches_a_host_holding_the_old(
        cluster: Cluster, second: Node, tidy: None, tmp_path: Path) -> None:
    import_through_a(cluster, "imported-again")
    on_host = cluster.node(H3).data_dir / "images" / "imported-again"
    with second.api(timeout=60) as b:
        b.wait_operation(b.create_vm("b4", image="imported-again", host=H3, memory_mib=128, start=True),
                         timeout=BOOT_WAIT_S)
        old = (on_host / "initrd").read_bytes()
        b.delete_vm("b4", force=True)
        b.delete_image("imported-again")
    # Other bytes under the same name: the initramfs padded with zeros (the kernel skips them).
    padded = tmp_path / "initrd"
    padded.write_bytes(default_files(cluster)[1].read_bytes() + bytes(4096))
    import_through_a(cluster, "imported-again", initrd=padded)
    with second.api(timeout=60) as b:
        b.wait_operation(b.create_vm("b5", image="imported-again", host=H3, memory_mib=128, start=True),
                         timeout=BOOT_WAIT_S)
        assert b.exec("b5", ["true"]).exit_code == 0
    assert (on_host / "initrd").read_bytes() == padded.read_bytes() != old
