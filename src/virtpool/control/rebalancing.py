"""Rebalancing plans from the database's hosts and VMs, applied through a ``MigrationApplier``.

The planning is the scheduler's (``scheduler/rebalance.py``); this module reads the pool into
its terms and hands a plan's moves to the applier. Live migration is a later issue: until it
exists, ``NoLiveMigration`` refuses to apply any move, and says so — a plan is never reported
as applied when nothing moved.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from virtpool.control.placement import host_capacity
from virtpool.control.scheduler import (
    DEFAULT_THRESHOLD_PP,
    MigrationApplier,
    RebalancePlan,
    plan_consolidation,
    plan_rebalance,
)
from virtpool.control.store.tables import DEFAULT_PROJECT, GroupRow, HostRow, VMRow
from virtpool.model.errors import InvalidRequest, VirtpoolError
from virtpool.model.inventory import MoveView, RebalanceView
from virtpool.model.resources import Claim, Group, PlacementRequest

MAX_THRESHOLD_PP = 100.0


class MigrationUnavailable(VirtpoolError):
    """This pool cannot live-migrate VMs yet."""

    status = 501
    title = "not implemented"


class NoLiveMigration:
    """The applier until live migration exists: refuses before moving anything."""

    def migrate(self, vm: str, to_host: str) -> None:
        raise MigrationUnavailable(
            f"cannot move VM '{vm}' to host '{to_host}': live migration is not available yet",
            hint="`virtpool pool rebalance --dry-run` shows the plan; move VMs by hand meanwhile")


def vm_key(project_id: str, name: str) -> str:
    """A VM's name in plans: its name, prefixed by its project outside the default one."""
    return name if project_id == DEFAULT_PROJECT else f"{project_id}/{name}"


def _view(plan: RebalancePlan, applied: bool) -> RebalanceView:
    return RebalanceView(
        mode=plan.mode, moves=[MoveView(vm=m.vm, source=m.source, target=m.target)
                               for m in plan.moves],
        spread_before_pp=plan.spread_before_pp, spread_after_pp=plan.spread_after_pp,
        threshold_pp=plan.threshold_pp, hosts_freed=list(plan.hosts_freed),
        stopped=plan.stopped, utilization_after_pct=dict(plan.utilization_after_pct),
        applied=applied)


class Rebalancer:
    def __init__(self, sessions: sessionmaker[Session],
                 applier: MigrationApplier | None = None) -> None:
        self._sessions = sessions
        self._applier: MigrationApplier = applier or NoLiveMigration()

    def plan(self, *, threshold_pp: float = DEFAULT_THRESHOLD_PP,
             consolidate: bool = False) -> RebalancePlan:
        """A plan for the pool as the database has it now."""
        if not 0 <= threshold_pp <= MAX_THRESHOLD_PP:
            raise InvalidRequest(f"threshold {threshold_pp:g} pp is out of range",
                                 hint="give a threshold between 0 and 100 percentage points")
        with self._sessions() as session:
            hosts = [host_capacity(r) for r in session.scalars(select(HostRow)
                                                                .order_by(HostRow.name))]
            known = {h.name for h in hosts}
            groups = {g.id: Group(g.id, g.policy, g.hard)  # type: ignore[arg-type]
                      for g in session.scalars(select(GroupRow))}
            claims: list[Claim] = []
            constraints: dict[str, PlacementRequest] = {}
            for vm in session.scalars(select(VMRow).order_by(VMRow.project_id, VMRow.name)):
                if vm.host not in known:
                    continue  # on a host outside the inventory: nothing can be planned for it
                key = vm_key(vm.project_id, vm.name)
                claims.append(Claim(vm=key, host=vm.host, cpus=vm.cpus,
                                    memory_mib=vm.max_memory_mib, disk_mib=vm.disk_mib,
                                    project=vm.project_id, group=vm.group_id))
                if vm.required_labels or vm.accel == "kvm" or vm.pinned_host:
                    constraints[key] = PlacementRequest(
                        vm=key, cpus=max(vm.cpus, 1), memory_mib=max(vm.max_memory_mib, 1),
                        disk_mib=vm.disk_mib, project=vm.project_id,
                        required_labels=dict(vm.required_labels or {}),
                        group=groups.get(vm.group_id) if vm.group_id else None,
                        accel="kvm" if vm.accel == "kvm" else None, host=vm.pinned_host)
        planner = plan_consolidation if consolidate else plan_rebalance
        return planner(hosts, claims, groups=groups, constraints=constraints,
                       threshold_pp=threshold_pp)

    def run(self, *, threshold_pp: float = DEFAULT_THRESHOLD_PP, consolidate: bool = False,
            dry_run: bool = True) -> RebalanceView:
        """Plan, and unless ``dry_run`` apply the moves in order through the applier."""
        plan = self.plan(threshold_pp=threshold_pp, consolidate=consolidate)
        if dry_run:
            return _view(plan, applied=False)
        for move in plan.moves:
            self._applier.migrate(move.vm, move.target)
        return _view(plan, applied=True)
