"""Run nftables through its JSON API: ``nft -j -f -`` with the ruleset on stdin.

Why the command and not Debian's ``python3-nftables`` binding: the binding lives in the
system's dist-packages, which the project's virtualenv does not see (it is isolated, and the
binding is not on PyPI). ``nft -j`` takes the very same JSON documents, as an argv list with
no shell involved, and one call is one atomic transaction.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from typing import Any

from virtpool.model.errors import OperationFailed

NFT_TIMEOUT_S = 30.0


def available() -> bool:
    return shutil.which("nft") is not None


def apply(commands: list[dict[str, Any]], *, netns: str | None = None) -> None:
    """Apply ``commands`` (nftables JSON commands: add, flush, delete ...) in one transaction."""
    if not commands:
        return
    run({"nftables": [{"metainfo": {"json_schema_version": 1}}, *commands]}, netns=netns)


def check(commands: list[dict[str, Any]], *, netns: str | None = None) -> None:
    """``nft --check``: the kernel accepts ``commands`` (every expression, hook and family it
    needs exists), without applying them."""
    if commands:
        run({"nftables": [{"metainfo": {"json_schema_version": 1}}, *commands]}, netns=netns,
            check_only=True)


def run(document: dict[str, Any], *, netns: str | None = None,
        check_only: bool = False) -> dict[str, Any]:
    """Send one JSON document to ``nft``; its JSON answer (empty for pure changes)."""
    if not available():  # also inside a namespace: `ip netns exec` would only say "exec failed"
        raise OperationFailed("nft is not installed on this host: virtual networks need nftables",
                              hint="run scripts/install-system-packages.sh as root (Debian's "
                                   "nftables package)")
    argv = ["nft", *(["-c"] if check_only else []), "-j", "-f", "-"]
    if netns is not None:
        argv = ["ip", "netns", "exec", netns, *argv]
    try:
        done = subprocess.run(argv, input=json.dumps(document), capture_output=True, text=True,
                              timeout=NFT_TIMEOUT_S)
    except FileNotFoundError as err:
        raise OperationFailed("nft is not installed",
                              hint="run scripts/install-system-packages.sh as root") from err
    if done.returncode != 0:
        raise OperationFailed(f"nftables refused the rules: {done.stderr.strip()}",
                              hint="the host needs nftables (kernel nf_tables) and root")
    return json.loads(done.stdout) if done.stdout.strip() else {}


def list_ruleset(*, netns: str | None = None) -> dict[str, Any]:
    """The whole ruleset as nftables JSON."""
    return run({"nftables": [{"list": {"ruleset": None}}]}, netns=netns)


def tables(*, netns: str | None = None) -> list[tuple[str, str]]:
    """(family, name) of every table."""
    found = run({"nftables": [{"list": {"tables": None}}]}, netns=netns)
    return [(i["table"]["family"], i["table"]["name"]) for i in found.get("nftables", [])
            if "table" in i]
