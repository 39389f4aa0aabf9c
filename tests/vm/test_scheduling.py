"""Scheduling through a real `virtpool up`: host inventory, ratios, labels, drain, groups,
refusals, the pool's weigher, rebalancing plans and the concurrent-claims contest.

No VM boots here: a create without --start makes a disk file and a row, on the host the
scheduler picks. The local host is put in maintenance so that placement happens on inventory
rows the tests add.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.conftest import Server, make_server
from tests.postgres import postgres_server
from virtpool.sdk import APIError, Client


@pytest.fixture
def pool(server: Server) -> Iterator[Server]:
    """The module's server with no VMs, no groups and only the local host (in maintenance)."""
    api = server.api()
    local = next(h.name for h in api.hosts() if h.local)
    api.set_host_state(local, "maintenance")
    yield server
    for vm in api.vms():
        api.delete_vm(vm.name, force=True)
    for group in api.groups():
        api.delete_group(group.name)
    for host in api.hosts():
        if not host.local:
            api.remove_host(host.name)
    api.set_host_state(local, "up")
    api.set_pool_settings(weigher="spread")


def ok(server: Server, *args: str) -> str:
    result = server.cli(*args)
    assert result.returncode == 0, result.stderr
    return result.stdout


def refused(server: Server, *args: str) -> str:
    result = server.cli(*args)
    assert result.returncode == 1, (result.stdout, result.stderr)
    return " ".join(result.stderr.split())  # Rich may wrap long messages


def test_the_local_host_registers_itself_with_its_hardware(server: Server) -> None:
    api = server.api()
    info = api.host()
    local = [h for h in api.hosts() if h.local]
    assert len(local) == 1
    host = local[0]
    assert (host.name, host.cpus.physical, host.memory_mib.physical, host.disk_mib.physical) == \
        (info.hostname, info.cpus, info.memory_mib, info.disk_total_mib)
    assert host.cpus.capacity == int(info.cpus * host.cpu_ratio) and host.balloon


def test_host_list_shows_allocation_bars_state_labels_and_ratios(pool: Server) -> None:
    api = pool.api()
    api.add_host("rack1", cpus=4, memory_mib=4096, disk_mib=100_000, labels={"zone": "a"})
    for i in range(3):
        ok(pool, "vm", "create", f"web{i}", "--cpus", "2", "--memory", "1G", "--disk", "64M")
    out = ok(pool, "host", "list")
    line = next(line for line in out.splitlines() if "rack1" in line)
    assert "up" in line and "zone=a" in line and "4/1/1" in line
    assert "6/16 38%" in line  # 6 of 16 vCPUs: 4 CPUs at ratio 4
    assert "3G/4G" in line
    assert "maintenance" in next(line for line in out.splitlines() if "(local)" in line)
    rows = json.loads(ok(pool, "host", "list", "--json"))
    rack = next(r for r in rows if r["name"] == "rack1")
    assert (rack["cpus"]["allocated"], rack["memory_mib"]["allocated"], rack["vms"]) == \
        (6, 3072, 3)


def test_set_ratio_label_and_drain_change_where_vms_go(pool: Server) -> None:
    api = pool.api()
    api.add_host("a", cpus=2, memory_mib=4096, disk_mib=100_000)
    api.add_host("b", cpus=2, memory_mib=4096, disk_mib=100_000)
    out = ok(pool, "host", "set-ratio", "a", "--cpu", "2")
    assert "4/1/1" not in out and "2/1/1" in out
    assert "needs ballooning" in refused(pool, "host", "set-ratio", "a", "--memory", "2")
    ok(pool, "host", "label", "a", "zone=x", "disk=ssd")
    assert json.loads(ok(pool, "host", "label", "a", "--remove", "disk", "--json"))["labels"] \
        == {"zone": "x"}
    ok(pool, "host", "drain", "b")
    hosts = {api.create_vm(f"v{i}", disk_mib=64).host for i in range(4)}
    assert hosts == {"a"}  # b is draining
    message = refused(pool, "host", "set-ratio", "a", "--cpu", "1")
    assert "a CPU ratio of 1 would let host 'a' promise 2 vCPUs, but its VMs hold 4 vCPUs" \
        in message and "2.00 or above" in message
    assert "no host can take 'v4': 2 hosts are not up (1 draining, 1 in maintenance), 1 lacks " \
        "vCPUs (needs 1, largest free 0)" in refused(pool, "vm", "create", "v4", "--disk", "64M")
    ok(pool, "host", "state", "b", "up")
    assert "on host 'b'" in ok(pool, "vm", "create", "v4", "--disk", "64M")


def test_anti_affinity_group_refusal_and_group_commands(pool: Server) -> None:
    api = pool.api()
    for name in ("a", "b"):
        api.add_host(name, cpus=8, memory_mib=8192, disk_mib=100_000)
    ok(pool, "group", "create", "web", "--policy", "anti-affinity")
    for i in (1, 2):
        ok(pool, "vm", "create", f"web{i}", "--group", "web", "--disk", "64M")
    message = refused(pool, "vm", "create", "web3", "--group", "web", "--disk", "64M")
    assert "no host can take 'web3': 2 hosts are excluded by anti-affinity group 'web'" in message
    shown = json.loads(ok(pool, "group", "show", "web", "--json"))
    assert sorted(shown["members"].values()) == ["a", "b"]
    assert "anti-affinity (hard)" in ok(pool, "group", "list")
    assert "group 'web' still has VMs: web1, web2" in refused(pool, "group", "delete", "web")
    assert "no placement group named 'db'" in refused(pool, "vm", "create", "x", "--group", "db")


def test_required_labels_refusal_and_match(pool: Server) -> None:
    api = pool.api()
    api.add_host("a", cpus=8, memory_mib=8192, disk_mib=100_000, labels={"disk": "hdd"})
    api.add_host("b", cpus=8, memory_mib=8192, disk_mib=100_000, labels={"disk": "ssd"})
    assert "on host 'b'" in ok(pool, "vm", "create", "db1", "--require-label", "disk=ssd",
                               "--disk", "64M")
    message = refused(pool, "vm", "create", "db2", "--require-label", "disk=nvme",
                      "--disk", "64M")
    assert "no host can take 'db2': 2 hosts lack label disk=nvme, 1 is not up " \
        "(1 in maintenance)" in message


def test_the_pool_weigher_and_the_per_vm_override(pool: Server) -> None:
    api = pool.api()
    for name in ("a", "b", "c"):
        api.add_host(name, cpus=8, memory_mib=8192, disk_mib=100_000)
    assert "pack" in ok(pool, "pool", "set", "--weigher", "pack")
    packed = {api.create_vm(f"p{i}", disk_mib=64).host for i in range(3)}
    assert len(packed) == 1
    spread = api.create_vm("s", disk_mib=64, weigher="spread").host
    assert spread not in packed
    assert "unknown weigher" in refused(pool, "pool", "set", "--weigher", "random")


def test_rebalance_dry_run_prints_the_plan_and_applying_says_migration_is_missing(
        pool: Server) -> None:
    api = pool.api()
    for name in ("a", "b"):
        api.add_host(name, cpus=2, memory_mib=4096, disk_mib=100_000)
    api.set_host_state("b", "maintenance")
    for i in range(4):
        api.create_vm(f"v{i}", memory_mib=512, disk_mib=64)  # all on a: 50 % vs 0 %
    api.set_host_state("b", "up")
    out = ok(pool, "pool", "rebalance", "--dry-run")
    moves = [line for line in out.splitlines() if line.split()[-2:] == ["a", "b"]]  # FROM TO
    assert len(moves) == 2
    assert "spread 50.0 pp → 0.0 pp (threshold 10 pp); 2 move(s)" in out
    assert "dry run: nothing was moved" in out
    plan = json.loads(ok(pool, "pool", "rebalance", "--dry-run", "--consolidate", "--json"))
    assert plan["mode"] == "consolidate" and plan["moves"] == []
    result = pool.cli("pool", "rebalance")
    assert result.returncode == 4
    assert "live migration is not available yet" in " ".join(result.stderr.split())
    assert {vm.host for vm in api.vms()} == {"a"}  # nothing moved


def test_host_admin_errors_are_clear(pool: Server) -> None:
    api = pool.api()
    assert "rack9" in ok(pool, "host", "add", "rack9", "--cpus", "8", "--memory", "16G",
                         "--disk", "1T", "--label", "zone=q")
    assert any(h.name == "rack9" and h.labels == {"zone": "q"} and h.memory_mib.physical == 16384
               for h in api.hosts())
    assert "host 'rack9' removed" in ok(pool, "host", "remove", "rack9")
    assert "no host named 'rack9'" in refused(pool, "host", "drain", "rack9")
    api.add_host("a", cpus=2, memory_mib=1024, disk_mib=1000)
    with pytest.raises(APIError) as dup:
        api.add_host("a", cpus=2, memory_mib=1024, disk_mib=1000)
    assert dup.value.status == 409 and "exists" in dup.value.detail
    with pytest.raises(APIError) as bad:
        api.add_host("b", cpus=2, memory_mib=1024, disk_mib=1000, reserved_cpus=4)
    assert bad.value.status == 422 and "reserves 4" in bad.value.detail
    with pytest.raises(APIError) as missing:
        api.set_host_state("nope", "up")
    assert missing.value.status == 404
    local = next(h.name for h in api.hosts() if h.local)
    with pytest.raises(APIError) as own:
        api.remove_host(local)
    assert own.value.status == 409


def test_200_concurrent_creates_through_the_api_for_room_for_50(pool: Server) -> None:
    contest(pool.api())


def test_200_concurrent_creates_through_the_api_on_postgresql(
        tmp_path_factory: pytest.TempPathFactory, image_cache: Path) -> None:
    with postgres_server() as url:
        srv = make_server(tmp_path_factory, image_cache, "pg-pool", db_url=url)
        try:
            api = srv.api()
            local = next(h.name for h in api.hosts() if h.local)
            api.set_host_state(local, "maintenance")
            contest(api)
        finally:
            srv.cleanup()


def contest(api: Client) -> None:
    """200 creates from 16 threads for room for exactly 50 VMs (see the unit test's twin)."""
    for i in range(20):
        api.add_host(f"two{i:02}", cpus=2, memory_mib=512, disk_mib=100_000)
    for i in range(10):
        api.add_host(f"one{i:02}", cpus=2, memory_mib=256, disk_mib=100_000)
    api.add_host("drained", cpus=64, memory_mib=1 << 16, disk_mib=100_000, state="draining")
    local = threading.local()

    def create(i: int) -> str | APIError:
        if not hasattr(local, "client"):
            local.client = Client(api.url, api.token, timeout=120)
        try:
            return local.client.create_vm(f"vm{i:03}", memory_mib=256, disk_mib=64).host
        except APIError as err:
            return err

    with ThreadPoolExecutor(max_workers=16) as workers:
        outcomes = list(workers.map(create, range(200)))
    placed = [o for o in outcomes if isinstance(o, str)]
    refusals = [o for o in outcomes if isinstance(o, APIError)]
    assert len(placed) == 50 and len(refusals) == 150
    assert {(e.status, e.title) for e in refusals} == {(409, "insufficient resources")}
    assert all(e.detail.startswith("no host can take 'vm") and "lack memory" in e.detail
               for e in refusals)
    hosts = {h.name: h for h in api.hosts()}
    vms = api.vms()
    assert len(vms) == 50
    for name, host in hosts.items():
        on_it = [vm for vm in vms if vm.host == name]
        assert host.memory_mib.allocated == sum(vm.max_memory_mib for vm in on_it) \
            <= host.memory_mib.capacity
        assert host.cpus.allocated == sum(vm.cpus for vm in on_it) <= host.cpus.capacity
        expected = 2 if name.startswith("two") else 1 if name.startswith("one") else 0
        assert len(on_it) == expected, name
