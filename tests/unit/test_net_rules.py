"""nftables by difference (node/net/rules.py, pure): from a rebuild and the kernel's listing,
only the commands that make up the difference, each rule named by its content."""

from __future__ import annotations

from typing import Any

from virtpool.node.net.rules import changes_to, rule_name

T = {"family": "inet", "name": "nwhost"}
C = {"family": "inet", "table": "nwhost"}


def rule(n: int) -> list[dict[str, Any]]:
    return [{"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": f"if{n}"}},
            {"drop": None}]


def rebuild(*rules: int, prio: int = -10, extra_chain: bool = False) -> list[dict[str, Any]]:
    commands: list[dict[str, Any]] = [
        {"add": {"table": T}}, {"delete": {"table": T}}, {"add": {"table": T}},
        {"add": {"chain": {**C, "name": "input", "type": "filter", "hook": "input", "prio": prio,
                           "policy": "accept"}}}]
    if extra_chain:
        commands.append({"add": {"chain": {**C, "name": "in_x"}}})
    commands += [{"add": {"rule": {**C, "chain": "input", "expr": rule(n)}}} for n in rules]
    return commands


def listing(*rules: int, prio: int = -10, foreign: bool = False,
            other_table: bool = False) -> dict[str, Any]:
    """What ``nft -j list ruleset`` says of a kernel that has ``rules`` (handle 10 + n)."""
    items: list[dict[str, Any]] = [
        {"metainfo": {"json_schema_version": 1}}, {"table": {**T, "handle": 3}},
        {"chain": {**C, "name": "input", "handle": 1, "type": "filter", "hook": "input",
                   "prio": prio, "policy": "accept"}}]
    items += [{"rule": {**C, "chain": "input", "handle": 10 + n, "expr": rule(n),
                        "comment": rule_name(rule(n))}} for n in rules]
    if foreign:  # added by hand: no name of ours
        items.append({"rule": {**C, "chain": "input", "handle": 99, "expr": rule(9)}})
    if other_table:
        items += [{"table": {"family": "inet", "name": "theirs", "handle": 4}},
                  {"chain": {"family": "inet", "table": "theirs", "name": "c", "handle": 1}}]
    return {"nftables": items}


def test_nothing_to_do_when_the_kernel_has_what_is_wanted() -> None:
    assert changes_to(rebuild(1, 2, 3), listing(1, 2, 3, other_table=True)) == ([], [])


def test_a_missing_table_is_made_whole_with_named_rules() -> None:
    commands, changes = changes_to(rebuild(1, 2), {"nftables": []})
    assert [next(iter(c)) for c in commands] == ["add"] * 4
    assert commands[-1]["add"]["rule"]["comment"] == rule_name(rule(2))
    assert [(c.action, c.kind) for c in changes] == [("add", "nft table")]


def test_a_new_rule_is_inserted_before_the_rule_that_follows_it() -> None:
    commands, changes = changes_to(rebuild(1, 2, 3), listing(1, 3))
    assert commands == [{"insert": {"rule": {**C, "chain": "input", "expr": rule(2),
                                             "comment": rule_name(rule(2)), "handle": 13}}}]
    assert [(c.action, c.kind, c.name) for c in changes] == [("add", "nft rule", "inet nwhost input")]
    # At the end of its chain: appended.
    commands, _ = changes_to(rebuild(1, 2, 3), listing(1, 2))
    assert commands == [{"add": {"rule": {**C, "chain": "input", "expr": rule(3),
                                          "comment": rule_name(rule(3))}}}]


def test_rules_no_longer_wanted_or_not_ours_are_deleted_by_handle() -> None:
    commands, changes = changes_to(rebuild(1, 3), listing(1, 2, 3, foreign=True))
    assert commands == [{"delete": {"rule": {**C, "chain": "input", "handle": 12}}},
                        {"delete": {"rule": {**C, "chain": "input", "handle": 99}}}]
    assert [c.action for c in changes] == ["delete", "delete"]


def test_a_new_chain_is_added_before_rules_and_an_old_one_deleted_after() -> None:
    commands, _ = changes_to(rebuild(1, extra_chain=True), listing(1))
    assert commands == [{"add": {"chain": {**C, "name": "in_x"}}}]
    with_chain = listing(1)
    with_chain["nftables"].append({"chain": {**C, "name": "gone", "handle": 7}})
    commands, changes = changes_to(rebuild(1), with_chain)
    assert commands == [{"flush": {"chain": {**C, "name": "gone"}}},
                        {"delete": {"chain": {**C, "name": "gone"}}}]
    assert [(c.action, c.kind) for c in changes] == [("delete", "nft chain")]


def test_a_chain_of_another_priority_rebuilds_its_table_in_one_transaction() -> None:
    commands, _ = changes_to(rebuild(1, prio=0), listing(1))
    assert commands[0] == {"delete": {"table": T}} and commands[1] == {"add": {"table": T}}


def test_a_table_no_longer_wanted_is_deleted_and_others_are_never_touched() -> None:
    empty = [{"add": {"table": T}}, {"delete": {"table": T}}]
    commands, changes = changes_to(empty, listing(1, other_table=True))
    assert commands == [{"delete": {"table": T}}]
    assert changes_to(empty, {"nftables": []}) == ([], [])
