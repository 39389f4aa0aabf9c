"""A VM's network counters, from the guest's point of view (received = what reached the guest).

Two sources, one per kind of NIC:

- a tap on a virtpool network: the host kernel's own counters in
  ``/sys/class/net/<tap>/statistics``. What the host sends into a tap is what the guest
  receives, so the host's ``tx`` is the guest's ``rx``. The guest cannot touch these.
- the default network (passt): passt keeps no counters and QEMU exposes none for a netdev, so
  the guest agent's ``guest-network-get-interfaces`` statistics (the guest's /proc/net/dev) are
  the only source. A guest can misreport them, but only for its own graphs and series.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SYS_CLASS_NET = Path("/sys/class/net")


@dataclass(frozen=True)
class NicCounters:
    """Cumulative bytes and packets, as the guest sees them."""

    rx_bytes: int
    tx_bytes: int
    rx_packets: int
    tx_packets: int

    def as_usage(self) -> dict[str, int]:
        """The VMUsage fields these fill."""
        return {"net_rx_bytes": self.rx_bytes, "net_tx_bytes": self.tx_bytes,
                "net_rx_packets": self.rx_packets, "net_tx_packets": self.tx_packets}


def _read_counter(tap: str, name: str, root: Path) -> int:
    return int((root / tap / "statistics" / name).read_text().strip())


def tap_counters(taps: Iterable[str], root: Path = SYS_CLASS_NET) -> NicCounters | None:
    """The sum over the VM's taps (host tx is guest rx); None when a tap is missing."""
    totals = [0, 0, 0, 0]
    found = False
    for tap in taps:
        try:
            figures = [_read_counter(tap, name, root)
                       for name in ("tx_bytes", "rx_bytes", "tx_packets", "rx_packets")]
        except (OSError, ValueError):
            return None
        totals = [a + b for a, b in zip(totals, figures)]
        found = True
    return NicCounters(*totals) if found else None


def guest_counters(interfaces: Any) -> NicCounters | None:
    """The sum over the guest's interfaces but loopback, from the reply of QGA's
    ``guest-network-get-interfaces``; None when the agent reports no statistics (before QEMU
    7.1's qemu-ga) or the reply is not what the schema says."""
    if not isinstance(interfaces, list):
        return None
    totals = [0, 0, 0, 0]
    found = False
    for nic in interfaces:
        if not isinstance(nic, dict) or nic.get("name") == "lo":
            continue
        stats = nic.get("statistics")
        if not isinstance(stats, dict):
            continue
        try:
            figures = [int(stats[key]) for key in ("rx-bytes", "tx-bytes", "rx-packets", "tx-packets")]
        except (KeyError, TypeError, ValueError):
            continue
        if min(figures) < 0:
            continue
        totals = [a + b for a, b in zip(totals, figures)]
        found = True
    return NicCounters(*totals) if found else None
