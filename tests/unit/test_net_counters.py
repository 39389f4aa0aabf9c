"""A VM's network counters as the guest sees them: a tap's host counters swapped (host tx is
guest rx), and the guest agent's reply summed over its NICs but loopback."""

from __future__ import annotations

from pathlib import Path

from virtpool.node.net.counters import NicCounters, guest_counters, tap_counters


def fake_tap(root: Path, name: str, rx: int, tx: int, rxp: int, txp: int) -> None:
    stats = root / name / "statistics"
    stats.mkdir(parents=True)
    for file, value in (("rx_bytes", rx), ("tx_bytes", tx), ("rx_packets", rxp), ("tx_packets", txp)):
        (stats / file).write_text(f"{value}\n")


def test_tap_counters_are_the_hosts_swapped_and_summed(tmp_path: Path) -> None:
    fake_tap(tmp_path, "t1", rx=100, tx=5000, rxp=1, txp=10)
    fake_tap(tmp_path, "t2", rx=50, tx=0, rxp=2, txp=0)
    assert tap_counters(["t1", "t2"], tmp_path) == NicCounters(rx_bytes=5000, tx_bytes=150, rx_packets=10,
                                                               tx_packets=3)


def test_a_missing_tap_gives_no_figures(tmp_path: Path) -> None:
    fake_tap(tmp_path, "t1", 1, 2, 3, 4)
    assert tap_counters(["t1", "gone"], tmp_path) is None
    assert tap_counters([], tmp_path) is None


def test_guest_counters_skip_loopback_and_malformed_entries() -> None:
    reply = [
        {"name": "lo", "statistics": {"rx-bytes": 999, "tx-bytes": 999, "rx-packets": 9, "tx-packets": 9}},
        {"name": "eth0", "statistics": {"rx-bytes": 1000, "tx-bytes": 200, "rx-packets": 10, "tx-packets": 2,
                                        "rx-errs": 0}},
        {"name": "eth1"},  # an older qemu-ga: no statistics
        {"name": "eth2", "statistics": {"rx-bytes": "x"}},
        {"name": "eth3", "statistics": {"rx-bytes": -1, "tx-bytes": 1, "rx-packets": 1, "tx-packets": 1}},
        "not a nic",
    ]
    assert guest_counters(reply) == NicCounters(rx_bytes=1000, tx_bytes=200, rx_packets=10, tx_packets=2)
    assert guest_counters([{"name": "eth0"}]) is None
    assert guest_counters({"error": "x"}) is None
