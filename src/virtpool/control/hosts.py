"""The pool's host inventory: registration, usage counters, ratios, labels and states.

The local host registers itself at every start from what its agent reports (CPUs, memory, disk,
accelerator); what an operator set — ratios, labels, state, reservation — survives that. Its
usage counters are then recomputed from the VMs placed on it. Other hosts are rows an admin adds
(their agents come with the multi-host work).

Every change to a host row is a conditional UPDATE on its generation, like a claim
(control/placement.py), so that a ratio change and a concurrent claim cannot both pass on
figures the other just changed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy import Select, exists, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from virtpool.control.events import EventLog
from virtpool.control.placement import Placer, host_capacity
from virtpool.control.store.tables import HostLeaseRow, HostRow, VMRow, utcnow
from virtpool.model.errors import Conflict, InvalidRequest, NotFound
from virtpool.model.inventory import (
    HostAdd,
    HostView,
    LabelsUpdate,
    RatiosUpdate,
    Usage,
)
from virtpool.model.resources import AdminHostState, HostCapacity, Ratios
from virtpool.model.spec import HostInfo

if TYPE_CHECKING:
    from virtpool.control.leases import LeaseService

# Optimistic updates retried this often before telling the caller to try again.
UPDATE_ATTEMPTS = 8
_RESOURCES = (("CPU", "cpus", "cpu_ratio", "vCPUs"),
              ("memory", "memory_mib", "memory_ratio", "MiB"),
              ("disk", "disk_mib", "disk_ratio", "MiB"))


def _view(row: HostRow, vms: int, local: str, project: str | None = None,
          lease: HostLeaseRow | None = None, now: datetime | None = None) -> HostView:
    """The host as the API shows it; with ``project``, as that project's token may see it:
    whether the host takes the project's VMs, but not which other projects it takes."""
    host = host_capacity(row)
    allowed = row.allowed_projects
    capacity, usable = host.capacity(), host.usable()
    return HostView(
        name=row.name, state=row.state, accel=row.accel,  # type: ignore[arg-type]
        cpus=Usage(allocated=row.used_cpus, capacity=capacity.cpus, physical=usable.cpus),
        memory_mib=Usage(allocated=row.used_memory_mib, capacity=capacity.memory_mib,
                         physical=usable.memory_mib),
        disk_mib=Usage(allocated=row.used_disk_mib, capacity=capacity.disk_mib,
                       physical=usable.disk_mib),
        cpu_ratio=row.cpu_ratio, memory_ratio=row.memory_ratio, disk_ratio=row.disk_ratio,
        balloon=row.balloon, labels=dict(row.labels or {}),
        allowed_projects=allowed if project is None else None,
        open_to_project=None if project is None else allowed is None or project in allowed,
        vms=vms, generation=row.generation, local=row.name == local,
        address=row.address, agent_version=row.agent_version,
        lease_epoch=lease.epoch if lease is not None else None,
        lease_age_s=round(((now or utcnow()) - lease.renewed_at).total_seconds(), 1)
        if lease is not None else None,
    )


def _vm_count(project: str | None) -> Select[tuple[int]]:
    """Count VMs: every project's, or only ``project``'s."""
    query = select(func.count(VMRow.id))
    return query if project is None else query.where(VMRow.project_id == project)


class HostService:
    """Read and change the host inventory. ``local`` is the name of this server's own host."""

    def __init__(self, sessions: sessionmaker[Session], placer: Placer, local: str,
                 events: EventLog | None = None) -> None:
        self._sessions = sessions
        self._placer = placer
        self.local = local
        self._events = events
        self.leases: LeaseService | None = None  # set by the pool: states of unreachable hosts

    # -- the local host -------------------------------------------------------------------

    def register_local(self, info: HostInfo, vtep: str | None = None) -> None:
        """Insert or refresh the local host's row from its agent's report, and its VXLAN
        address (``vtep``: None, no networks that span it and other hosts).

        Only the hardware figures and the VXLAN address change on re-registration; ratios,
        labels, state and the reservation stay as the operator set them. Every VM here gets a
        virtio-balloon device and the memory balancer runs in this server, so the local host
        has ``balloon`` on.
        """
        figures = {"cpus": info.cpus, "memory_mib": info.memory_mib,
                   "disk_mib": info.disk_total_mib, "accel": info.accel, "balloon": True,
                   "vtep": vtep}
        for _ in range(UPDATE_ATTEMPTS):
            with self._sessions.begin() as session:
                if session.get(HostRow, self.local) is not None:
                    session.execute(
                        update(HostRow).where(HostRow.name == self.local)
                        .values(**figures, generation=HostRow.generation + 1, updated_at=utcnow())
                        .execution_options(synchronize_session=False))
                    break
            try:
                with self._sessions.begin() as session:
                    session.add(HostRow(name=self.local, labels={}, **figures))
                break
            except IntegrityError:
                continue  # another server sharing the database registered it first: update
        self._placer.invalidate(None)

    def reconcile_usage(self, name: str | None = None) -> None:
        """Recompute a host's counters (default: the local host's) from the VMs placed on it.

        The row is locked first, then one UPDATE computes the sums as subqueries: no claim can
        slip between reading and writing them.
        """
        name = name or self.local

        def total(column: object) -> object:
            return (select(func.coalesce(func.sum(column), 0)).where(VMRow.host == name)
                    .scalar_subquery())

        with self._sessions.begin() as session:
            _lock_host(session, name)
            session.execute(
                update(HostRow).where(HostRow.name == name).values(
                    used_cpus=total(VMRow.cpus), used_memory_mib=total(VMRow.max_memory_mib),
                    used_disk_mib=total(VMRow.disk_mib), generation=HostRow.generation + 1)
                .execution_options(synchronize_session=False))
        self._placer.invalidate(name)

    # -- reading --------------------------------------------------------------------------

    def list(self, project: str | None = None) -> Sequence[HostView]:
        """Every host; with ``project``, as that project's token may see them (see _view)."""
        with self._sessions() as session:
            counts = {host: count for count, host in session.execute(
                _vm_count(project).add_columns(VMRow.host).group_by(VMRow.host))}
            leases = {lease.host: lease for lease in session.scalars(select(HostLeaseRow))}
            rows = session.scalars(select(HostRow).order_by(HostRow.name))
            now = utcnow()
            return [_view(row, counts.get(row.name, 0), self.local, project, leases.get(row.name), now)
                    for row in rows]

    def get(self, name: str, project: str | None = None) -> HostView:
        """One host; with ``project``, as that project's token may see it (see _view)."""
        with self._sessions() as session:
            row = self._row(session, name)
            vms = session.scalar(_vm_count(project).where(VMRow.host == name)) or 0
            return _view(row, vms, self.local, project, session.get(HostLeaseRow, name))

    @staticmethod
    def _row(session: Session, name: str) -> HostRow:
        row = session.get(HostRow, name)
        if row is None:
            raise NotFound(f"no host named '{name}'", hint="see `virtpool host list`")
        return row

    # -- inventory rows -------------------------------------------------------------------

    def add(self, spec: HostAdd) -> HostView:
        """Add a host row (a host whose agent is not connected yet); refuse a duplicate."""
        fields = spec.model_dump()
        # The model's rules: reservation within the host, memory overcommit only with a balloon.
        HostCapacity(
            name=spec.name, cpus=spec.cpus, memory_mib=spec.memory_mib, disk_mib=spec.disk_mib,
            reserved_cpus=spec.reserved_cpus, reserved_memory_mib=spec.reserved_memory_mib,
            reserved_disk_mib=spec.reserved_disk_mib,
            ratios=Ratios(spec.cpu_ratio, spec.memory_ratio, spec.disk_ratio),
            balloon=spec.balloon, labels=spec.labels, state=spec.state, accel=spec.accel)
        try:
            with self._sessions.begin() as session:
                session.add(HostRow(**fields))
        except IntegrityError as err:
            raise Conflict(f"a host named '{spec.name}' exists",
                           hint="change it with `virtpool host set-ratio/label`") from err
        self._placer.invalidate(None)
        return self.get(spec.name)

    def remove(self, name: str, also: Callable[[Session, str], None] | None = None) -> None:
        """Remove a host row that holds no VM. The local host cannot be removed. ``also`` runs
        in the same transaction (the revocation of the host's certificate)."""
        if name == self.local:
            raise Conflict(f"host '{name}' is this server's own host; it registers itself at "
                           "every start", hint=f"`virtpool host state {name} maintenance` "
                           "keeps new VMs off it")
        with self._sessions.begin() as session:
            self._row(session, name)
            # Locked first: on PostgreSQL the statements below then read after any claim on
            # this host has committed (a statement that waits for a lock keeps its snapshot).
            _lock_host(session, name)
            vms = session.scalar(select(func.count()).where(VMRow.host == name)) or 0
            if also is not None and vms == 0:
                also(session, name)
            gone = session.execute(
                HostRow.__table__.delete().where(
                    HostRow.name == name, ~exists().where(VMRow.host == name))).rowcount
        if not gone:
            raise Conflict(f"host '{name}' holds {vms} VM(s)",
                           hint="delete or move them first (`virtpool vm list`)")
        self._placer.invalidate(None)

    # -- operator changes -----------------------------------------------------------------

    def set_ratios(self, name: str, change: RatiosUpdate) -> HostView:
        """Change allocation ratios.

        Refuses a memory ratio above 1.0 on a host without ballooning, and any ratio that
        would leave the host with less capacity than its VMs already hold: lowering a ratio
        never evicts anything, so the operator moves or deletes VMs first.
        """
        if change.cpu is None and change.memory is None and change.disk is None:
            raise InvalidRequest("no ratio given", hint="give --cpu, --memory and/or --disk")

        def values(row: HostRow) -> dict[str, object]:
            ratios = Ratios(change.cpu or row.cpu_ratio, change.memory or row.memory_ratio,
                            change.disk or row.disk_ratio)
            new = replace(host_capacity(row), ratios=ratios)  # re-checks the balloon rule
            capacity, usable = new.capacity().as_tuple(), new.usable().as_tuple()
            used = (row.used_cpus, row.used_memory_mib, row.used_disk_mib)
            for (label, _, column, unit), cap, phys, held in zip(
                    _RESOURCES, capacity, usable, used, strict=True):
                if held > cap:
                    least = held / phys if phys else float("inf")
                    raise Conflict(
                        f"a {label} ratio of {getattr(ratios, column.split('_')[0]):g} would let "
                        f"host '{name}' promise {cap} {unit}, but its VMs hold {held} {unit}",
                        hint=f"keep the {label} ratio at {least:.2f} or above, or move or "
                             "delete VMs first")
            return {"cpu_ratio": ratios.cpu, "memory_ratio": ratios.memory,
                    "disk_ratio": ratios.disk}

        return self._change(name, values)

    def label(self, name: str, change: LabelsUpdate) -> HostView:
        """Set and remove labels (``--require-label`` matches them)."""
        if not change.set and not change.remove:
            raise InvalidRequest("no label given", hint="e.g. `virtpool host label HOST zone=a`")

        def values(row: HostRow) -> dict[str, object]:
            labels = {k: v for k, v in (row.labels or {}).items() if k not in change.remove}
            labels.update(change.set)
            return {"labels": labels}

        return self._change(name, values)

    def set_state(self, name: str, state: AdminHostState) -> HostView:
        """up takes new VMs; draining, maintenance and down take none (their VMs stay).

        An unreachable host keeps showing `unreachable`; the state given is the one it returns
        to when its agent is back.
        """
        if self.leases is not None and self.leases.set_resume_state(name, state):
            view = self.get(name)
            message = f"host '{name}' is unreachable; it returns as {state}"
        else:
            view = self._change(name, lambda row: {"state": state})
            message = f"host '{name}' is {state}"
        if self._events is not None:
            self._events.record("host.state", message, data={"host": name, "state": view.state,
                                                              "set": state})
        return view

    def _change(self, name: str, values: Callable[[HostRow], dict[str, object]]) -> HostView:
        """Read the row, compute new values, write them if no claim came between."""
        for _ in range(UPDATE_ATTEMPTS):
            with self._sessions.begin() as session:
                row = self._row(session, name)
                seen = row.generation
                new = values(row)
                done = session.execute(
                    update(HostRow).where(HostRow.name == name, HostRow.generation == seen)
                    .values(**new, generation=HostRow.generation + 1, updated_at=utcnow())
                    .execution_options(synchronize_session=False)).rowcount == 1
            if done:
                self._placer.invalidate(name)
                return self.get(name)
        raise Conflict(f"host '{name}' kept changing while it was being updated",
                       hint="try again")


def _lock_host(session: Session, name: str) -> None:
    """Hold the host's row until the transaction ends (SQLite: its single writer does)."""
    session.execute(select(HostRow.name).where(HostRow.name == name).with_for_update())
