"""How each VM on this host was last started, kept on disk so that a restarted agent knows it.

A reboot from inside a guest is an exit of its QEMU (``-no-reboot``): the agent starts the VM
again with the spec and slot it was started with, and waits for its guest as long as its boot
was allowed. That knowledge must outlive the agent, or a guest that reboots after an agent
restart would be reported as crashed. The records are the agent's own files
(``<data>/launches/<vm id>.json``, 0600 in a 0700 root-owned dir): never in a VM's directory,
whose user could rewrite them.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from virtpool.model.spec import VMSpec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Launch:
    """What a VM's last start was given."""

    spec: VMSpec
    slot: int
    boot_timeout_s: float


class LaunchRecords:
    """The launch of each VM of this agent, in memory and on disk."""

    def __init__(self, directory: Path) -> None:
        self._dir = directory
        self._dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self._dir, 0o700)
        self._known: dict[str, Launch] = {}

    def _path(self, vm_id: str) -> Path:
        return self._dir / f"{vm_id}.json"

    def put(self, vm_id: str, launch: Launch) -> None:
        """Record (atomically: a crash leaves the old record or the new one)."""
        self._known[vm_id] = launch
        body = json.dumps({"spec": launch.spec.model_dump(mode="json"), "slot": launch.slot,
                           "boot_timeout_s": launch.boot_timeout_s})
        tmp = self._path(vm_id).with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(body)
        os.replace(tmp, self._path(vm_id))

    def get(self, vm_id: str) -> Launch | None:
        """The VM's last launch: from memory, else from its record (after an agent restart)."""
        known = self._known.get(vm_id)
        if known is not None:
            return known
        try:
            raw = json.loads(self._path(vm_id).read_text())
            launch = Launch(spec=VMSpec.model_validate(raw["spec"]), slot=int(raw["slot"]),
                            boot_timeout_s=float(raw["boot_timeout_s"]))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError, ValidationError) as err:
            log.warning("launch record of VM %s is unreadable (%s); it cannot be rebooted", vm_id, err)
            return None
        self._known[vm_id] = launch
        return launch

    def drop(self, vm_id: str) -> None:
        self._known.pop(vm_id, None)
        self._path(vm_id).unlink(missing_ok=True)
        self._restore_path(vm_id).unlink(missing_ok=True)

    # A VM made from a memory snapshot starts from it once (its first start); later starts
    # boot cold, as any VM's.

    def _restore_path(self, vm_id: str) -> Path:
        return self._dir / f"{vm_id}.restore"

    def restore_at_next_start(self, vm_id: str, snapshot: str) -> None:
        fd = os.open(self._restore_path(vm_id), os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(snapshot)

    def pending_restore(self, vm_id: str) -> str | None:
        try:
            return self._restore_path(vm_id).read_text().strip() or None
        except FileNotFoundError:
            return None

    def restored(self, vm_id: str) -> None:
        """The restore was carried out: the next start boots."""
        self._restore_path(vm_id).unlink(missing_ok=True)
