"""nftables by difference: the few commands that turn the kernel's ruleset into the one wanted.

The wanted ruleset comes as a rebuild (``plan.nft_commands`` and ``secgroups.secgroup_commands``:
each table of ours added then deleted, then its chains and rules added). Applied as is, it
would re-make every table on every converge: new handles, counters back to zero, a burst of
work in the kernel for nothing. Instead only what differs changes: a rule that is wanted and
there stays (same handle), a rule no longer wanted is deleted by its handle, a new one is
inserted at its place in its chain.

What the kernel has is read from the kernel (``nft -j list ruleset``), never from a file: each
rule we add carries a comment naming its content (``vp:`` and a hash of its expressions), so a
rule added by anyone else, or changed since, has no wanted name and goes. A chain whose hook,
type, priority or policy differs from the wanted one makes its table be rebuilt whole.
"""

from __future__ import annotations

import difflib
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from virtpool.model.net_change import Change

COMMENT_PREFIX = "vp:"
TableKey = tuple[str, str]  # (family, name)
BaseSpec = tuple[str, str, int, str] | None  # a base chain's (type, hook, prio, policy)


@dataclass
class Chain:
    """One chain: its base spec and its rules as (name, handle, expressions), in order (the
    handle is 0 in a wanted chain: the kernel gives it)."""

    base: BaseSpec
    rules: list[tuple[str, int, list[Any]]] = field(default_factory=list)


def rule_name(expr: list[Any]) -> str:
    """The comment that names a rule by its content."""
    text = json.dumps(expr, sort_keys=True, separators=(",", ":"))
    return COMMENT_PREFIX + hashlib.sha256(text.encode()).hexdigest()[:24]


def wanted(commands: list[dict[str, Any]]) -> tuple[list[TableKey], dict[TableKey, dict[str, Chain]]]:
    """From a rebuild: the tables it owns (those it deletes) and what it adds to them."""
    owned: list[TableKey] = []
    tables: dict[TableKey, dict[str, Chain]] = {}
    for command in commands:
        if "delete" in command:
            table = command["delete"]["table"]
            owned.append((table["family"], table["name"]))
            tables.pop(owned[-1], None)  # the add before it only made sure there was one to delete
            continue
        body = command["add"]
        if "table" in body:
            tables.setdefault((body["table"]["family"], body["table"]["name"]), {})
        elif "chain" in body:
            chain = body["chain"]
            tables[(chain["family"], chain["table"])][chain["name"]] = Chain(_base(chain))
        else:
            rule = body["rule"]
            name = rule_name(rule["expr"])
            if rule.get("comment"):  # a rule's own words follow its name
                name = f"{name} {rule['comment']}"
            tables[(rule["family"], rule["table"])][rule["chain"]].rules.append((name, 0, rule["expr"]))
    return owned, tables


def actual(listing: dict[str, Any], owned: list[TableKey]) -> dict[TableKey, dict[str, Chain]]:
    """From ``nft -j list ruleset``: our tables as they are in the kernel."""
    tables: dict[TableKey, dict[str, Chain]] = {}
    for item in listing.get("nftables", []):
        kind, body = next(iter(item.items()))
        if kind not in ("table", "chain", "rule"):
            continue
        key = (body["family"], body["name"] if kind == "table" else body["table"])
        if key not in owned:
            continue
        if kind == "table":
            tables.setdefault(key, {})
        elif kind == "chain":
            tables.setdefault(key, {})[body["name"]] = Chain(_base(body))
        else:
            chain = tables.setdefault(key, {}).setdefault(body["chain"], Chain(None))
            chain.rules.append((body.get("comment", ""), body["handle"], body["expr"]))
    return tables


def changes_to(commands: list[dict[str, Any]],
               listing: dict[str, Any]) -> tuple[list[dict[str, Any]], list[Change]]:
    """The commands that make the kernel (``listing``) what the rebuild ``commands`` say, in
    one transaction, and the changes they make. Nothing to do: two empty lists."""
    owned, want = wanted(commands)
    have = actual(listing, owned)
    first: list[dict[str, Any]] = []  # tables rebuilt, then new chains
    deletions: list[dict[str, Any]] = []
    additions: list[dict[str, Any]] = []
    last: list[dict[str, Any]] = []  # chains and tables no longer wanted, once nothing jumps there
    changes: list[Change] = []
    for key in owned:
        family, name = key
        table = {"family": family, "table": name}
        if key not in want:
            if key in have:
                last.append({"delete": {"table": {"family": family, "name": name}}})
                changes.append(Change("delete", "nft table", f"{family} {name}"))
            continue
        chains = want[key]
        current = have.get(key)
        if current is None or any(c in current and current[c].base != chain.base
                                  for c, chain in chains.items()):
            if current is not None:
                first.append({"delete": {"table": {"family": family, "name": name}}})
            first.extend(_rebuild(family, name, chains))
            rules = sum(len(c.rules) for c in chains.values())
            changes.append(Change("add", "nft table", f"{family} {name}",
                                  f"{len(chains)} chains, {rules} rules"))
            continue
        for chain_name, chain in chains.items():
            where = {**table, "chain": chain_name}
            if chain_name not in current:
                first.append({"add": {"chain": _chain_body(family, name, chain_name, chain)}})
                changes.append(Change("add", "nft chain", f"{family} {name} {chain_name}"))
            old = current.get(chain_name, Chain(chain.base)).rules
            for command, change in _rule_diff(where, old, chain.rules):
                (deletions if "delete" in command else additions).append(command)
                changes.append(change)
        for chain_name in sorted(current.keys() - chains.keys()):
            last.append({"flush": {"chain": {**table, "name": chain_name}}})
            last.append({"delete": {"chain": {**table, "name": chain_name}}})
            changes.append(Change("delete", "nft chain", f"{family} {name} {chain_name}"))
    return first + deletions + additions + last, changes


def _rule_diff(where: dict[str, str], old: list[tuple[str, int, list[Any]]],
               new: list[tuple[str, int, list[Any]]]) -> list[tuple[dict[str, Any], Change]]:
    """Delete what is no longer wanted by its handle; insert each new rule before the kept
    rule that follows it (or append it at the end), so the chain's order is the wanted one."""
    place = f"{where['family']} {where['table']} {where['chain']}"
    out: list[tuple[dict[str, Any], Change]] = []
    matcher = difflib.SequenceMatcher(None, [r[0] for r in old], [r[0] for r in new], autojunk=False)
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag == "equal":
            continue
        for _, handle, expr in old[i1:i2]:
            out.append(({"delete": {"rule": {**where, "handle": handle}}},
                        Change("delete", "nft rule", place, _summary(expr))))
        for comment, _, expr in new[j1:j2]:
            rule = {**where, "expr": expr, "comment": comment}
            if i2 < len(old):
                out.append(({"insert": {"rule": {**rule, "handle": old[i2][1]}}},
                            Change("add", "nft rule", place, _summary(expr))))
            else:
                out.append(({"add": {"rule": rule}}, Change("add", "nft rule", place, _summary(expr))))
    return out


def _rebuild(family: str, name: str, chains: dict[str, Chain]) -> list[dict[str, Any]]:
    commands: list[dict[str, Any]] = [{"add": {"table": {"family": family, "name": name}}}]
    commands += [{"add": {"chain": _chain_body(family, name, c, chain)}} for c, chain in chains.items()]
    for chain_name, chain in chains.items():
        commands += [{"add": {"rule": {"family": family, "table": name, "chain": chain_name,
                                       "expr": expr, "comment": comment}}}
                     for comment, _, expr in chain.rules]
    return commands


def _chain_body(family: str, table: str, name: str, chain: Chain) -> dict[str, Any]:
    body: dict[str, Any] = {"family": family, "table": table, "name": name}
    if chain.base is not None:
        kind, hook, prio, policy = chain.base
        body.update(type=kind, hook=hook, prio=prio, policy=policy)
    return body


def _base(chain: dict[str, Any]) -> BaseSpec:
    if "hook" not in chain:
        return None
    return (chain["type"], chain["hook"], int(chain["prio"]), chain.get("policy", "accept"))


def _summary(expr: list[Any]) -> str:
    text = json.dumps(expr, separators=(",", ":"))
    return text if len(text) <= 240 else text[:237] + "..."
