"""A host whose link is cut in the middle of an operation: the operation fails saying which host
went out of reach, the VM is reconciled once the link heals, and nothing is left behind — no
VM dir, half-sent image, QEMU, record or claim that nobody owns.

Two cuts, each at the moment that matters: while a boot waits for the guest (the QEMU runs on,
on the far side of the cut), and while a host that lacks the image is being sent it.
"""

from __future__ import annotations

import pytest

from tests.cluster.conftest import Cluster
from tests.cluster.harness import HOST_NAMES
from tests.cluster.test_liveness import LAPSE_WAIT_S
from tests.conftest import qemu_pids, wait_for
from virtpool.control.agents.remote import CALL_TIMEOUT_S, SLACK_S, RemoteAgent
from virtpool.model.operation import Operation

H1, H2, H3 = HOST_NAMES
BOOT_WAIT_S = 300
# A boot's wait gives up after the VM's boot timeout plus the slack; the lease lapses sooner.
GIVE_UP_S = 120 + SLACK_S + LAPSE_WAIT_S


def vm_qemus(cluster: Cluster, host: str, vm_id: str) -> list[int]:
    node = cluster.node(host)
    return [pid for pid in qemu_pids(node.data_dir) if vm_id in open(f"/proc/{pid}/cmdline").read()]


def leftovers_on(cluster: Cluster, host: str) -> dict[str, list[str]]:
    data = cluster.node(host).data_dir
    return {d: sorted(p.name for p in (data / d).iterdir()) if (data / d).exists() else []
            for d in ("vms", "uploads")}


def host_agent(cluster: Cluster, host: str) -> RemoteAgent:
    """The host's agent as the control plane reaches it (its client certificate)."""
    with cluster.api() as api:
        address = api.inventory_host(host).address
    pki = cluster.control.data_dir / "pki"
    return RemoteAgent(host, address or "", ca=pki / "ca.crt", cert=pki / "control.crt",
                       key=pki / "control.key", revoked=frozenset)


def test_a_link_cut_while_a_vm_boots_fails_the_start_then_the_vm_is_reconciled(cluster: Cluster) -> None:
    h3 = cluster.node(H3).host
    assert h3 is not None
    with cluster.api(timeout=BOOT_WAIT_S) as api:
        vm = api.create_vm("cut-boot", host=H3)  # the disk is made (and the image fetched) first
        op = api.start_vm("cut-boot")
        # The QEMU runs, and the control plane waits for its guest: now the link goes.
        assert wait_for(lambda: vm_qemus(cluster, H3, vm.id), 120), cluster.logs()
        h3.cut()
        try:
            ended = api.wait_operation(op, timeout=GIVE_UP_S + 60, check=False)
            assert ended.status == "failed", (ended, cluster.logs())
            assert f"host '{H3}'" in (ended.error or "") and (
                "unreachable" in ended.error or "did not answer" in ended.error), ended.error
            assert vm_qemus(cluster, H3, vm.id)  # out of reach, not dead
            assert api.vm("cut-boot").state.value in ("unknown", "error")
        finally:
            h3.heal()
        # Back: the records and the host agree again. Either the boot is carried on (the QEMU
        # that ran all along is the VM, running) or, if the boot had already been given up, its
        # QEMU is stopped; never a QEMU that its record does not account for.
        def settled() -> str | None:
            state = api.vm("cut-boot").state.value
            qemus = vm_qemus(cluster, H3, vm.id)
            if state == "running" and len(qemus) == 1:
                return state
            if state == "error" and not qemus:
                return state
            return None

        assert wait_for(settled, 4 * LAPSE_WAIT_S + BOOT_WAIT_S, interval=1), (
            api.vm("cut-boot"), vm_qemus(cluster, H3, vm.id), cluster.logs())
        if settled() == "running":
            assert api.exec("cut-boot", ["true"]).exit_code == 0
        api.delete_vm("cut-boot", force=True)
        assert wait_for(lambda: not vm_qemus(cluster, H3, vm.id), 30)
        assert vm.id not in leftovers_on(cluster, H3)["vms"]
        view = api.inventory_host(H3)
        assert (view.vms, view.memory_mib.allocated) == (0, 0), view


# Its own waits (the fetch under way, the create's give-up, the agent's upload stall) add up past
# the suite's 300 s on a loaded machine.
@pytest.mark.timeout(600)
def test_a_link_cut_while_a_host_is_sent_the_image_fails_the_create_and_leaves_nothing(
        cluster: Cluster) -> None:
    node = cluster.node(H1)
    assert node.host is not None
    agent = host_agent(cluster, H1)
    try:
        if "default" in [i.name for i in agent.list_images()]:
            agent.delete_image("default")  # h1 must fetch it for the next VM
    finally:
        agent.close()
    seen: list[str] = []
    node.host.throttle("20mbit")  # ~25 s for the image: time to cut it half way
    try:
        with cluster.api(timeout=60) as api:
            # It answers at once: the fetch runs in the create's operation.
            op = api.create_vm("cut-fetch", host=H1, start=True)
        assert isinstance(op, Operation)

        def fetching() -> bool:
            with cluster.api() as api:
                message = api.operation(op.id).message
            seen.append(message or "")
            return bool(message and "fetching image" in message and "(0%)" not in message)

        assert wait_for(fetching, 120, interval=0.2), (seen[-5:], cluster.logs())
        node.host.cut()
        with cluster.api() as api:
            done = api.wait_operation(op, timeout=CALL_TIMEOUT_S + SLACK_S + 60, check=False)
        assert done.done, "the create never gave up on the host that was cut off"
    finally:
        node.host.heal()
        node.host.unthrottle()
    with cluster.api() as api:
        op = api.operations(kind="vm.create", target="cut-fetch", limit=1)[0]
        assert op.status == "failed" and f"host '{H1}' did not answer" in (op.error or ""), op
        assert "cut-fetch" not in [vm.name for vm in api.vms()]  # no record, no claim
        view = api.inventory_host(H1)
        assert (view.vms, view.memory_mib.allocated) == (0, 0), view
    # The half-sent file goes once the agent hears the connection is gone, or has heard nothing on
    # it for UPLOAD_STALL_S (a cut link may send it no FIN at all).
    assert wait_for(lambda: leftovers_on(cluster, H1) == {"vms": [], "uploads": []}, 240, interval=1), \
        leftovers_on(cluster, H1)
    agent = host_agent(cluster, H1)
    try:
        assert "default" not in [i.name for i in agent.list_images()]  # nothing half-imported
    finally:
        agent.close()
