"""Warm VMs: with `pool set --warm-vms N` the pool keeps N VMs of the default shape booted and
paused, outside every quota; `vm create NAME --start` of that shape takes one, which then runs
as a VM of the caller's with its own name, clock and identity, and the pool boots the next."""

from __future__ import annotations

import json
import time

from tests.conftest import Server, wait_for
from virtpool.model.vm import VMInfo
from virtpool.sdk import Client

WARM = "_warm"


def warm_vms(server: Server, state: str | None = "paused") -> list[VMInfo]:
    return [vm for vm in server.api().vms(all_projects=True)
            if vm.project == WARM and (state is None or vm.state == state)]


def guest(server: Server, name: str, script: str, client: Client | None = None) -> str:
    ran = (client or server.api()).exec(name, ["sh", "-c", script])
    assert ran.exit_code == 0, ran.stderr
    return ran.stdout.strip()


def test_a_create_of_the_default_shape_takes_a_warm_vm_and_the_pool_boots_the_next(server: Server) -> None:
    api = server.api()
    assert api.pool_settings().warm_vms == 0
    set_ = server.cli("pool", "set", "--warm-vms", "1", "--json")
    assert set_.returncode == 0 and json.loads(set_.stdout)["warm_vms"] == 1, set_.stderr
    assert wait_for(lambda: len(warm_vms(server)) == 1, timeout=240), warm_vms(server, None)
    paused_at = time.time()
    first = warm_vms(server)[0]
    # Paused, outside the caller's project and quota: a tenant sees none of it.
    assert first.name.startswith("warm-") and not api.vms()
    assert api.project_info("default").usage.vms == 0
    listed = server.cli("vm", "list", "--all-projects")
    assert listed.returncode == 0 and first.name in listed.stdout and WARM in listed.stdout

    # A quota with no room refuses the take as it refuses any create; the warm VM stays warm.
    api.create_project("tight", vms=0)
    with Client(api.url, api.token, project="tight") as tight:
        refused = server.cli("--project", "tight", "vm", "create", "nope", "--start")
        assert refused.returncode != 0 and "quota" in refused.stderr, refused.stderr
        assert not tight.vms()
    assert [vm.id for vm in warm_vms(server)] == [first.id]

    # Paused this long before the take: a clock left standing would be that far behind.
    time.sleep(max(0.0, paused_at + 20 - time.time()))
    taken_at = time.time()
    made = server.cli("vm", "create", "web", "--start", "--wait", "--json")
    assert made.returncode == 0, made.stderr
    web = api.vm("web")
    assert web.id == first.id and web.state == "running" and web.project == "default"
    assert api.project_info("default").usage.vms == 1
    assert guest(server, "web", "hostname; cat /etc/hostname").split() == ["web", "web"]
    # The take sets the clock to the second (model/guest_identity.py), so the guest's clock lies
    # between the take's start and now, whatever the exec's latency on a loaded machine; a clock
    # left standing would be about 20 s short of the take's start, less the take's own time.
    clock = int(guest(server, "web", "date +%s"))
    assert taken_at - 1 <= clock <= time.time() + 1, (taken_at, clock)
    web_mac = guest(server, "web", "cat /sys/class/net/eth0/address")

    # The pool boots another, a VM of its own: another id, another MAC.
    assert wait_for(lambda: len(warm_vms(server)) == 1, timeout=240), warm_vms(server, None)
    second = warm_vms(server)[0]
    assert second.id != first.id
    api.create_vm("web2", start=True)
    web2 = api.wait_vm("web2")
    assert web2.id == second.id and web2.state == "running"
    assert guest(server, "web2", "hostname") == "web2"
    assert guest(server, "web2", "cat /sys/class/net/eth0/address") != web_mac

    # Another shape boots as ever, and a taken VM is an ordinary one: it stops and boots again
    # with its own name.
    api.create_vm("big", start=True, memory_mib=320)
    assert api.wait_vm("big").state == "running"
    assert api.vm("big").id not in {first.id, second.id}
    assert server.cli("vm", "stop", "web").returncode == 0
    assert server.cli("vm", "start", "web", "--wait").returncode == 0
    assert guest(server, "web", "hostname") == "web"

    # Back to none: the warm VMs go.
    assert server.cli("pool", "set", "--warm-vms", "0").returncode == 0
    assert wait_for(lambda: not warm_vms(server, None), timeout=120), warm_vms(server, None)
    for name in ("web", "web2", "big"):
        api.delete_vm(name, force=True)
    assert list((server.data_dir / "vms").iterdir()) == []
