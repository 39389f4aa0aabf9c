"""The automatic memory balancer: moves balloons when the host runs short of memory.

It runs when the host's memory is overcommitted (ratio above 1.0). Each round it measures,
asks the pure policy (``model/memory_policy.py``) what to move, applies that through the agent
and records every decision as an event. The host's memory is read from the host, or — for
tests and for operators who want a hard line — from a configured budget, against which the
guests' current sizes are counted.
"""

from __future__ import annotations

import logging
import threading

import psutil
from pydantic import BaseModel, Field

from virtpool.control.audit import AuditLog
from virtpool.control.events import EventLog
from virtpool.control.store.tables import DEFAULT_PROJECT
from virtpool.control.vms import VMService
from virtpool.model.agent import Agent
from virtpool.model.errors import VirtpoolError
from virtpool.model.memory_policy import GuestMemory, PolicyConfig, plan
from virtpool.model.requests import REQUEST
from virtpool.model.states import VMState

log = logging.getLogger(__name__)
MIB = 1024 * 1024
ACTOR = "memory-balancer"


class MemoryPolicy(BaseModel):
    """How the host's memory is shared (shown and set through the API)."""

    ratio: float = Field(default=1.0, ge=1.0, le=4.0, description="memory overcommit ratio")
    budget_mib: int | None = Field(default=None, ge=64, description="count this as the host's memory")
    threshold_mib: int = Field(default=256, ge=0, description="reclaim when available falls below")
    interval_s: float = Field(default=2.0, gt=0.1, le=60)

    @property
    def active(self) -> bool:
        return self.ratio > 1.0


class PolicyUpdate(BaseModel):
    model_config = REQUEST

    budget_mib: int | None = Field(default=None, ge=64)
    threshold_mib: int | None = Field(default=None, ge=0)


class MemoryBalancer:
    def __init__(self, vms: VMService, agent: Agent, events: EventLog, audit: AuditLog,
                 policy: MemoryPolicy) -> None:
        self._vms = vms
        self._agent = agent
        self._events = events
        self._audit = audit
        self.policy = policy
        # vm id -> (balloon target we set, the assignment it was set under)
        self._targets: dict[str, tuple[int, int]] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self.policy.active and self._thread is None:
            self._thread = threading.Thread(target=self._run, name="memory-balancer", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def update(self, change: PolicyUpdate) -> MemoryPolicy:
        values = change.model_dump(exclude_unset=True, exclude_none=True)
        # Validated as a whole, then swapped in one assignment: the balancer thread reads it.
        self.policy = MemoryPolicy.model_validate({**self.policy.model_dump(), **values})
        self._events.record("memory.policy", f"memory policy changed: {values}", data=values)
        return self.policy

    def _run(self) -> None:
        while not self._stop.wait(self.policy.interval_s):
            try:
                self.tick()
            except Exception:  # one bad round (a VM stopping mid-way) must not end balancing
                log.exception("memory balancing round failed")

    def tick(self) -> list[str]:
        """One round; returns the names (``project/name`` outside 'default') of the VMs whose
        balloon moved."""
        # This host's VMs only: the balancer weighs this host's memory (psutil, or the budget).
        running = [vm for vm in self._vms.list(limit=10_000)
                   if vm.state == VMState.RUNNING and vm.host == self._vms.local_host]
        guests, ids = [], {}
        for vm in running:
            target = self._targets.get(vm.id)
            if target is not None and target[1] != vm.memory_mib:
                target = None  # the user resized it since: their word wins
            try:
                figures = self._agent.vm_stats(vm.id)
            except VirtpoolError:
                continue  # stopping or crashing as we look: the next round sees it settled
            current = target[0] if target else (figures.balloon_mib or vm.memory_mib)
            # Names are unique within a project only: outside 'default', the project prefixes it.
            label = vm.name if vm.project == DEFAULT_PROJECT else f"{vm.project}/{vm.name}"
            guests.append(GuestMemory(label, current, figures.guest_free_mib, vm.memory_mib))
            ids[label] = vm
        self._targets = {vm.id: t for vm in running if (t := self._targets.get(vm.id))}
        available = self._available(guests)
        moved = []
        config = PolicyConfig(threshold_mib=self.policy.threshold_mib)
        for move in plan(available, guests, config):
            vm = ids[move.name]
            if not self._vms.move_balloon(vm.id, vm.memory_mib, move.to_mib):
                continue  # resized or stopped since this round looked
            self._targets[vm.id] = (move.to_mib, vm.memory_mib)
            self._events.record(
                "memory.balloon", f"balloon of '{vm.name}' {move.from_mib} → {move.to_mib} MiB: {move.reason}",
                actor=ACTOR, vm=vm.name, project_id=vm.project,
                data={"from_mib": move.from_mib, "to_mib": move.to_mib, "host_available_mib": round(available)},
            )
            self._audit.record(ACTOR, "memory.balloon", vm.name, f"{move.from_mib} → {move.to_mib} MiB",
                               project_id=vm.project)
            moved.append(move.name)
        return moved

    def _available(self, guests: list[GuestMemory]) -> float:
        if self.policy.budget_mib is not None:
            return self.policy.budget_mib - sum(g.current_mib for g in guests)
        return psutil.virtual_memory().available / MIB
