"""IPv4 forwarding for NAT networks, switched on only where it is needed, and put back.

A guest's packets to the outside arrive on its bridge, and the replies on the host's uplinks:
Linux forwards a packet only when forwarding is on for the interface it arrived on. So a NAT
network needs forwarding on its bridge (ours) and on the uplinks, never the global
``net.ipv4.ip_forward`` (which would switch it on for every interface, present and future).
An uplink that did not forward before is switched on and *held*: ``plan.nft_commands`` then
drops everything arriving on it that is neither a reply to a guest's masqueraded connection nor
a DNAT to a guest, so the host forwards nothing else than it did. The original value is kept
in a host-wide registry under /run (gone at reboot, as the setting is) with the holders (each
applier's state dir); the last holder to let go puts the original value back. A holder whose
state dir is gone (its platform was deleted while holding) no longer counts.
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from virtpool.model.errors import OperationFailed

REGISTRY = Path("/run/virtpool-forwarding")
SYSCTL_TIMEOUT_S = 10.0


def uplinks(links: list[Any], ours: Any) -> tuple[str, ...]:
    """Pure, over netlink's link messages: the interfaces replies from outside come in on: not
    down, not loopback, not a bridge, a bridge's port, a VXLAN or a tap, not one of ours
    (``ours.match(name)``)."""
    found = []
    for link in links:
        name = link.get_attr("IFLA_IFNAME") or ""
        info = link.get_attr("IFLA_LINKINFO")
        kind = info.get_attr("IFLA_INFO_KIND") if info is not None else None
        if (name == "lo" or ours.match(name) or link.get_attr("IFLA_MASTER")
                or kind in ("bridge", "vxlan", "tun") or link.get_attr("IFLA_OPERSTATE") == "DOWN"):
            continue
        found.append(name)
    return tuple(sorted(found))


class Forwarding:
    """Switches forwarding on the interfaces an applier needs, as one holder of them."""

    def __init__(self, holder: Path, netns: str | None = None) -> None:
        self.holder = str(holder)
        self.netns = netns
        ns = netns or f"ino{os.stat('/proc/self/ns/net').st_ino}"
        self.registry = REGISTRY / ns

    def set_bridge(self, name: str, on: bool) -> bool:
        """Our own bridge: no registry, it goes with the device. Whether it had to change."""
        if self._read(name) == int(on):
            return False
        self._write(name, int(on))
        return True

    def would_hold(self, name: str) -> bool:
        """Whether ``hold`` would hold ``name``: virtpool switched it on, or it is off."""
        with self._locked() as entries:
            return name in entries or self._read(name) == 0

    def hold(self, names: tuple[str, ...]) -> list[tuple[str, str]]:
        """Forwarding on for ``names``, held by us: those that did not forward before virtpool
        are the ones the rules restrict. Others already forwarding (the operator's choice) are
        neither held nor restricted. Lets go of uplinks no longer named. What it changed:
        (interface, the value it set)."""
        changed = []
        with self._locked() as entries:
            for name in names:
                entry = entries.get(name)
                if entry is None:
                    if self._read(name) == 1:
                        continue
                    entry = entries[name] = {"original": 0, "holders": []}
                if self.holder not in entry["holders"]:
                    entry["holders"].append(self.holder)
                if self._read(name) != 1:
                    self._write(name, 1)
                    changed.append((name, "1"))
            for name in set(entries) - set(names):
                original = entries[name]["original"]
                if self._let_go(entries, name):
                    changed.append((name, str(original)))
        return changed

    def release_all(self) -> None:
        with self._locked() as entries:
            for name in list(entries):
                self._let_go(entries, name)

    def _let_go(self, entries: dict[str, Any], name: str) -> bool:
        """Whether the original value was put back (we were its last holder)."""
        entry = entries[name]
        entry["holders"] = [h for h in entry["holders"] if h != self.holder and Path(h).is_dir()]
        if entry["holders"]:
            return False
        try:
            self._write(name, entry["original"])
        except OperationFailed:
            pass  # the interface is gone, and its setting with it
        del entries[name]
        return True

    @contextmanager
    def _locked(self) -> Iterator[dict[str, Any]]:
        self.registry.mkdir(parents=True, exist_ok=True, mode=0o700)
        with open(self.registry / "lock", "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            path = self.registry / "uplinks.json"
            try:
                entries = json.loads(path.read_text())
            except (OSError, ValueError):
                entries = {}
            yield entries
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(entries, indent=1, sort_keys=True))
            tmp.replace(path)

    def _path(self, name: str) -> str:
        return f"/proc/sys/net/ipv4/conf/{name}/forwarding"

    def _read(self, name: str) -> int:
        if self.netns is None:
            try:
                return int(Path(self._path(name)).read_text())
            except (OSError, ValueError) as err:
                raise OperationFailed(f"cannot read IPv4 forwarding of {name}: {err}") from err
        return int(self._in_netns(["cat", self._path(name)]).strip())

    def _write(self, name: str, value: int) -> None:
        if self.netns is None:
            try:
                Path(self._path(name)).write_text(f"{value}\n")
            except OSError as err:
                raise OperationFailed(f"cannot set IPv4 forwarding of {name}: {err}",
                                      hint="NAT networks need root") from err
            return
        self._in_netns(["sysctl", "-qw", f"net/ipv4/conf/{name}/forwarding={value}"])

    def _in_netns(self, argv: list[str]) -> str:
        done = subprocess.run(["ip", "netns", "exec", str(self.netns), *argv], capture_output=True,
                              text=True, timeout=SYSCTL_TIMEOUT_S)
        if done.returncode != 0:
            raise OperationFailed(f"{' '.join(argv)} in {self.netns} failed: {done.stderr.strip()}")
        return done.stdout
