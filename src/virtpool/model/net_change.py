"""What a network converge changed on a host: data, for its caller (the control plane, over the
agent contract), its tests and its log."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Change:
    """One change made to the host: ``action`` (add, delete, set, start, stop, reload) on a
    ``kind`` of thing (bridge, vxlan, tap, address, fdb, sysctl, nft table, nft chain, nft rule,
    dnsmasq) called ``name``; ``detail`` says what, where that helps."""

    action: str
    kind: str
    name: str
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.action} {self.kind} {self.name}" + (f": {self.detail}" if self.detail else "")
