"""Every refusal explains itself, in one sentence built from the counters the tests check."""

from __future__ import annotations

import pytest

from virtpool.control.scheduler import HostArrays, explain, place, reasons, refusal
from virtpool.model.errors import InsufficientResources
from virtpool.model.resources import Claim, Group, HostCapacity, PlacementRequest


def host(name: str, cpus: int = 4, memory_mib: int = 8192, disk_mib: int = 10240,
         **kw: object) -> HostCapacity:
    return HostCapacity(name, cpus=cpus, memory_mib=memory_mib, disk_mib=disk_mib, **kw)


def req(vm: str = "vm", cpus: int = 1, memory_mib: int = 512, disk_mib: int = 0,
        **kw: object) -> PlacementRequest:
    return PlacementRequest(vm, cpus=cpus, memory_mib=memory_mib, disk_mib=disk_mib, **kw)


def test_the_example_from_the_issue() -> None:
    # 7 hosts with at most 1024 MiB free, 3 hosts already running a member of 'web'.
    hosts = [host(f"m{i}") for i in range(7)] + [host(f"w{i}") for i in range(3)]
    claims = [Claim(f"big{i}", f"m{i}", 1, 8192 - 1024 - 100 * i, 0) for i in range(7)]
    claims += [Claim(f"web{i}", f"w{i}", 1, 1024, 0, group="web") for i in range(3)]
    decision = place(HostArrays.build(hosts, claims),
                     req("web3", memory_mib=2048, group=Group("web", "anti-affinity")))
    assert decision.removed["memory"] == 7 and decision.removed["group"] == 3
    assert explain(decision) == (
        "no host can take 'web3': 7 hosts lack memory (needs 2048 MiB, largest free 1624 MiB), "
        "3 are excluded by anti-affinity group 'web'")


def test_counts_in_the_sentence_are_the_decision_counters() -> None:
    hosts = [host("a", state="draining"), host("b", state="down"), host("c", state="down"),
             host("d", accel="tcg"), host("e", labels={"zone": "y"}),
             host("f", labels={"zone": "x"}, allowed_projects=frozenset({"red"})),
             host("g", labels={"zone": "x"}), host("h", labels={"zone": "x"})]
    claims = [Claim("full", "g", 16, 0, 0), Claim("disk", "h", 0, 0, 10000)]
    decision = place(HostArrays.build(hosts, claims),
                     req("db1", cpus=2, disk_mib=1024, accel="kvm", project="blue",
                         required_labels={"zone": "x"}))
    sentence = explain(decision)
    assert sentence == (
        "no host can take 'db1': 3 hosts are not up (1 draining, 2 down), "
        "1 lacks KVM, 1 is closed to project 'blue', 1 lacks label zone=x, "
        "1 lacks vCPUs (needs 2, largest free 0), 1 lacks disk (needs 1024 MiB, largest free "
        "240 MiB)")
    parts = reasons(decision)
    assert sentence == "no host can take 'db1': " + ", ".join(parts)
    numbers = [int(part.split()[0]) for part in parts]
    assert sum(numbers) == decision.hosts_total == 8
    assert sorted(numbers, reverse=True) == sorted(
        (n for n in decision.removed.values() if n), reverse=True)


def test_singular_and_affinity_wording() -> None:
    arrays = HostArrays.build([host("a"), host("b")], [Claim("d0", "a", 16, 0, 0, group="db")])
    decision = place(arrays, req("db1", cpus=1, group=Group("db", "affinity")))
    assert explain(decision) == (
        "no host can take 'db1': 1 host is outside affinity group 'db', "
        "1 lacks vCPUs (needs 1, largest free 0)")


def test_excluded_and_project_less_wording() -> None:
    arrays = HostArrays.build([host("a"), host("b", allowed_projects=frozenset({"p"}))], [])
    decision = place(arrays, req("v"), exclude=[0])
    assert reasons(decision) == ["1 host was already tried for this placement",
                                 "1 is reserved for particular projects"]


def test_largest_free_is_among_the_hosts_that_filter_removed() -> None:
    # The host with the most free memory was removed earlier (down): it must not be quoted.
    arrays = HostArrays.build([host("down", state="down"), host("a"), host("b")],
                              [Claim("x", "a", 1, 7168, 0), Claim("y", "b", 1, 6144, 0)])
    decision = place(arrays, req("v", memory_mib=4096))
    assert decision.largest_free == {"memory": 2048}
    assert "largest free 2048 MiB" in explain(decision)


def test_placed_sentence() -> None:
    arrays = HostArrays.build([host("a"), host("b", state="down")], [])
    assert explain(place(arrays, req("web1"))) == (
        "placed 'web1' on host 'a' (spread; 1 of 2 hosts could take it)")


def test_empty_pool() -> None:
    assert explain(place(HostArrays.build([], []), req("v"))) == (
        "no host can take 'v': the pool has no hosts")


def test_refusal_is_an_insufficient_resources_error_with_a_hint() -> None:
    arrays = HostArrays.build([host("a", memory_mib=1024)], [])
    error = refusal(place(arrays, req("big", memory_mib=2048)))
    assert isinstance(error, InsufficientResources)
    assert error.message == ("no host can take 'big': 1 host lacks memory "
                             "(needs 2048 MiB, largest free 1024 MiB)")
    assert error.hint and "add a host" in error.hint


def test_refusal_hints_differ_by_cause() -> None:
    down = refusal(place(HostArrays.build([host("a", state="down")], []), req()))
    assert down.hint and "back up" in down.hint
    labels = refusal(place(HostArrays.build([host("a")], []),
                           req(required_labels={"gpu": "yes"})))
    assert labels.hint and "constraints" in labels.hint


def test_refusal_of_a_placed_decision_is_a_bug() -> None:
    with pytest.raises(ValueError):
        refusal(place(HostArrays.build([host("a")], []), req()))


def test_a_pinned_vm_goes_to_its_host_only_and_a_refusal_says_what_that_host_lacks() -> None:
    hosts = [host("a"), host("b", memory_mib=1024), host("c")]
    arrays = HostArrays.build(hosts, [Claim("web0", "a", 1, 256, 0, group="web")])
    # Spread would pick c or b: the pin wins.
    assert place(arrays, req("x", host="a")).host == "a"
    assert place(arrays, req("x", memory_mib=2048, host="c")).host == "c"
    too_big = place(arrays, req("big", memory_mib=2048, host="b"))
    assert not too_big.placed and too_big.removed["pinned"] == 2 and too_big.removed["memory"] == 1
    assert explain(too_big) == ("host 'b' cannot take 'big': it lacks memory (needs 2048 MiB, "
                                "largest free 1024 MiB)")
    apart = place(arrays, req("web1", host="a", group=Group("web", "anti-affinity")))
    assert explain(apart) == "host 'a' cannot take 'web1': it is excluded by anti-affinity group 'web'"
    error = refusal(apart)
    assert isinstance(error, InsufficientResources) and "drop --host" in (error.hint or "")
    # A host that left the pool between the check and the placement: said plainly.
    gone = place(arrays, req("x", host="zz"))
    assert explain(gone) == "host 'zz' cannot take 'x': it is not in the pool"
