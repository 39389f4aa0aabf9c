"""Resources of running VMs, measured from inside the guest and from the host."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Server, make_server, wait_for
from virtpool.sdk import APIError


def meminfo_mib(server: Server, vm: str) -> float:
    out = server.api().exec(vm, ["grep", "MemTotal", "/proc/meminfo"]).stdout
    return int(out.split()[1]) / 1024


def balloon_mib(server: Server, vm: str) -> float:
    return server.api().vm_stats(vm).balloon_mib or 0.0


def guest_uptime(server: Server, vm: str) -> float:
    return float(server.api().exec(vm, ["cat", "/proc/uptime"]).stdout.split()[0])


def test_balloon_down_to_128_and_back_to_256(server: Server) -> None:
    api = server.api()
    api.create_vm("bal", memory_mib=256, start=True)
    assert api.wait_vm("bal").state == "running"
    full = meminfo_mib(server, "bal")

    result = server.cli("vm", "resize", "bal", "--memory", "128M", "--json")
    assert result.returncode == 0, result.stderr
    assert wait_for(lambda: balloon_mib(server, "bal") <= 140, timeout=10)
    # The guest's own total drops by what the balloon took. (Its MemTotal is ~40 MiB under the
    # VM's size at any balloon setting: the kernel's own image and tables are never counted.)
    assert wait_for(lambda: full - meminfo_mib(server, "bal") >= 120, timeout=10)

    assert server.cli("vm", "resize", "bal", "--memory", "256M").returncode == 0
    assert wait_for(lambda: balloon_mib(server, "bal") >= 240, timeout=10)
    assert wait_for(lambda: meminfo_mib(server, "bal") >= full - 8, timeout=10)
    assert api.vm("bal").memory_mib == 256


def test_memory_grows_up_to_max_memory_and_no_further(server: Server) -> None:
    api = server.api()
    api.create_vm("grow", memory_mib=256, max_memory_mib=512, start=True)
    assert api.wait_vm("grow").state == "running"
    assert wait_for(lambda: balloon_mib(server, "grow") <= 260, timeout=10)
    small = meminfo_mib(server, "grow")
    api.resize_vm("grow", memory_mib=448)
    assert wait_for(lambda: meminfo_mib(server, "grow") - small >= 180, timeout=10)

    before = api.vm("grow")
    refused = server.cli("vm", "resize", "grow", "--memory", "1G")
    assert refused.returncode == 1 and "at most 512 MiB" in refused.stderr
    refused = server.cli("vm", "resize", "grow", "--max-memory", "1G")
    assert refused.returncode == 1 and "changes only at boot" in " ".join(refused.stderr.split())
    assert api.vm("grow").model_dump(exclude={"updated_at"}) == before.model_dump(exclude={"updated_at"})
    api.delete_vm("grow", force=True)


def test_disk_grows_from_1g_to_2g_while_the_guest_runs(server: Server) -> None:
    api = server.api()
    api.create_vm("disk", disk_mib=1024, start=True)
    assert api.wait_vm("disk").state == "running"
    uptime = guest_uptime(server, "disk")
    assert server.cli("vm", "resize", "disk", "--disk-size", "2G").returncode == 0
    sectors = wait_for(
        lambda: api.exec("disk", ["cat", "/sys/block/vda/size"]).stdout.strip() == "4194304", timeout=10
    )
    assert sectors, "the guest did not see its disk grow"
    assert guest_uptime(server, "disk") > uptime  # no reboot happened
    shrink = server.cli("vm", "resize", "disk", "--disk-size", "1G")
    assert shrink.returncode == 1 and "only grow" in shrink.stderr
    assert api.vm("disk").disk_mib == 2048
    api.delete_vm("disk", force=True)


def test_disk_throttled_to_100_iops_measures_at_most_120_in_the_guest(server: Server) -> None:
    api = server.api()
    api.create_vm("iops", start=True)
    assert api.wait_vm("iops").state == "running"
    assert server.cli("vm", "resize", "iops", "--disk-iops", "100").returncode == 0
    ops = 300
    script = ('a=$(cut -d" " -f1 /proc/uptime); '
              f"dd if=/dev/vda of=/dev/null bs=4k count={ops} iflag=direct 2>/dev/null; "
              'b=$(cut -d" " -f1 /proc/uptime); echo $a $b')
    start, end = map(float, api.exec("iops", ["sh", "-c", script]).stdout.split())
    measured = ops / (end - start)
    assert measured <= 120, measured
    # And the limit comes off again.
    assert server.cli("vm", "resize", "iops", "--disk-iops", "0").returncode == 0
    start, end = map(float, api.exec("iops", ["sh", "-c", script]).stdout.split())
    assert ops / max(end - start, 0.01) > 200
    api.delete_vm("iops", force=True)


def test_cpus_change_at_the_next_boot_and_the_output_says_so(server: Server) -> None:
    api = server.api()
    api.create_vm("cpus", cpus=1, start=True)
    assert api.wait_vm("cpus").state == "running"
    result = server.cli("vm", "resize", "cpus", "--cpus", "2")
    assert result.returncode == 0
    assert "takes effect at the next boot" in " ".join(result.stderr.split())
    assert api.exec("cpus", ["nproc"]).stdout.strip() == "1"
    assert server.cli("vm", "restart", "cpus").returncode == 0
    assert api.exec("cpus", ["nproc"]).stdout.strip() == "2"
    too_many = server.cli("vm", "resize", "cpus", "--cpus", str(api.host().cpus + 1))
    assert too_many.returncode == 1
    assert "has too few CPUs (the VM's new shape needs" in " ".join(too_many.stderr.split())
    assert api.vm("cpus").cpus == 2
    api.delete_vm("cpus", force=True)


def test_stats_show_cpu_memory_and_disk(server: Server) -> None:
    api = server.api()
    api.create_vm("busy", start=True)
    assert api.wait_vm("busy").state == "running"
    api.exec("busy", ["sh", "-c", "dd if=/dev/vda of=/dev/null bs=64k count=100 2>/dev/null; "
                      "while :; do :; done >/dev/null 2>&1 </dev/null &"])

    def busy_enough() -> bool:
        return (api.vm_stats("busy").cpu_percent or 0) > 50

    assert wait_for(busy_enough, timeout=10)
    stats = json.loads(server.cli("vm", "stats", "busy", "--json").stdout)
    assert stats["disk_read_bytes"] >= 100 * 64 * 1024
    assert 200 <= stats["balloon_mib"] <= 256
    assert stats["qemu_rss_mib"] > 50
    top = json.loads(server.cli("host", "top", "--json").stdout)
    assert "busy" in {row["name"] for row in top}
    table = server.cli("host", "top", "--once")
    assert table.returncode == 0 and "busy" in table.stdout
    api.delete_vm("busy", force=True)


def test_resize_of_an_unknown_vm_or_with_nothing_to_change_is_refused(server: Server) -> None:
    with pytest.raises(APIError) as err:
        server.api().resize_vm("ghost", memory_mib=128)
    assert err.value.status == 404
    api = server.api()
    api.create_vm("idle")
    with pytest.raises(APIError) as err:
        api.resize_vm("idle")
    assert err.value.status == 422
    api.delete_vm("idle")


# -- automatic memory balancing -------------------------------------------------------------


@pytest.fixture(scope="module")
def overcommitted(tmp_path_factory: pytest.TempPathFactory, image_cache: Path) -> Iterator[Server]:
    """A host that counts 500 MiB as its memory and overcommits it twice."""
    srv = make_server(tmp_path_factory, image_cache, "overcommit", extra_args=(
        "--memory-ratio", "2", "--memory-budget", "500M", "--memory-threshold", "64M"))
    yield srv
    srv.cleanup()


def test_balancer_reclaims_under_pressure_and_gives_back_when_it_goes(overcommitted: Server) -> None:
    api = overcommitted.api()
    for name in ("m1", "m2"):
        api.create_vm(name, memory_mib=256, start=True)
    for name in ("m1", "m2"):
        assert api.wait_vm(name).state == "running"

    # 2 × 256 MiB against a 500 MiB budget: the balancer must take at least 76 MiB back.
    def reclaimed() -> bool:
        return sum(balloon_mib(overcommitted, n) for n in ("m1", "m2")) <= 500 - 64 + 8

    assert wait_for(reclaimed, timeout=30)
    for name in ("m1", "m2"):
        assert balloon_mib(overcommitted, name) >= 128 - 8  # never below the floor (half of 256)
    moves = api.events(kind="memory.balloon")
    assert moves and all(e.actor == "memory-balancer" for e in moves)
    assert "under the 64 MiB threshold" in moves[0].message
    audited = json.loads(overcommitted.cli("audit", "list", "--json").stdout)
    assert any(e["actor"] == "memory-balancer" and e["action"] == "memory.balloon" for e in audited)

    # The pressure goes: memory is given back to what the user assigned.
    assert overcommitted.cli("host", "memory-policy", "--budget", "2G").returncode == 0
    assert wait_for(lambda: all(balloon_mib(overcommitted, n) >= 250 for n in ("m1", "m2")), timeout=30)
    back = api.events(kind="memory.balloon", after=moves[-1].id)
    assert any("back above the threshold" in e.message for e in back)
