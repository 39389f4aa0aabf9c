"""The host guard: no VM process may open a connection to an address of this host.

A guest's traffic on the default network leaves through passt, which runs as the VM's own
unprivileged user (``node/sandbox/users.py``, from any agent's uid range). Every packet a VM user's socket sends to an
address of this host (loopback or any of its interfaces: the kernel routes all of them through
``lo``) and that starts or continues a flow of its own is dropped in the ``output`` hook.
Replies on connections the host opened towards a VM (its ``--port`` forwards) travel in the
conntrack *reply* direction and pass. Only root can install it; nothing of it depends on
which VMs exist, so it is put in place once and never torn down while VMs may run.
"""

from __future__ import annotations

from typing import Any

from virtpool.node.net import nft, rules
from virtpool.node.sandbox.uid_ranges import RANGE_COUNT, RANGE_SIZE
from virtpool.node.sandbox.users import VM_ID_BASE

DEFAULT_TABLE = "vpguard"
VM_UID_END = VM_ID_BASE + RANGE_COUNT * RANGE_SIZE - 1  # the last uid of every agent's ranges


def guard_commands(table: str = DEFAULT_TABLE) -> list[dict[str, Any]]:
    """Pure: the nftables JSON commands that rebuild the guard table from scratch (the form
    ``rules.changes_to`` takes)."""
    chain = {"family": "inet", "table": table, "name": "output"}
    return [
        {"add": {"table": {"family": "inet", "name": table}}},
        {"delete": {"table": {"family": "inet", "name": table}}},
        {"add": {"table": {"family": "inet", "name": table}}},
        {"add": {"chain": {**chain, "type": "filter", "hook": "output", "prio": 0,
                           "policy": "accept"}}},
        {"add": {"rule": {"family": "inet", "table": table, "chain": "output", "comment": "virtpool: VM users never reach the host", "expr": [
            {"match": {"op": "==", "left": {"meta": {"key": "skuid"}},
                       "right": {"range": [VM_ID_BASE, VM_UID_END]}}},
            {"match": {"op": "==", "left": {"meta": {"key": "oifname"}}, "right": "lo"}},
            {"match": {"op": "==", "left": {"ct": {"key": "direction"}}, "right": "original"}},
            {"counter": None},
            {"drop": None},
        ]}}},
    ]


def install(table: str = DEFAULT_TABLE) -> None:
    """Put the guard in place. Idempotent, by difference: a guard in place is left as it is
    (an agent restart re-makes nothing); a missing or changed one is made in one transaction."""
    commands, _ = rules.changes_to(guard_commands(table), nft.list_ruleset())
    nft.apply(commands)
