"""Placement against the database: the scheduler chooses a host, a conditional UPDATE claims it.

A claim adds the VM's vCPUs, memory and disk to its host's ``used_*`` counters with::

    UPDATE hosts SET used_x = used_x + :x, generation = generation + 1
     WHERE name = :host AND generation = :seen AND state = 'up'
       AND used_x + :x <= (x - reserved_x) * x_ratio        -- for every resource

in the caller's transaction (the one that inserts the VM row), so the VM and its claim commit
or vanish together. A claim decided on stale figures matches no row: the host is reloaded and
the request placed again, at most ``CLAIM_ATTEMPTS`` times. The capacity guard in the UPDATE
means that even a bug in the figures can never overbook a host.

The hosts' figures are kept in memory between placements (``HostArrays``, with each host's
generation) because reading 10,000 rows per VM would cost more than the decision. The cache is
an optimisation only — the generation check makes every claim exact: a host this process
changed is reloaded before the next placement, the whole inventory is reloaded every
``CACHE_MAX_AGE_S`` and before any refusal, so a refusal is always decided on fresh figures.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from virtpool.control.scheduler import Decision, HostArrays, place, refusal
from virtpool.control.store.tables import GroupRow, HostRow, VMRow
from virtpool.model.errors import Conflict, InsufficientResources, NotFound
from virtpool.model.resources import Claim, Group, HostCapacity, PlacementRequest, Ratios, Resources
from virtpool.model.spec import VMSpec

# Enough for a burst of creates racing for the same few hosts; a placement that loses this
# often is told to try again rather than spinning.
CLAIM_ATTEMPTS = 12
# Changes made by other servers sharing the database are seen at least this often.
CACHE_MAX_AGE_S = 5.0
# As in model.resources.capacity_under_ratio: 100 × 0.29 must count as 29.
_SLACK = 1e-9


def host_capacity(row: HostRow) -> HostCapacity:
    """The scheduler's view of a host row (validated: a broken row is an error, not a guess)."""
    return HostCapacity(
        name=row.name, cpus=row.cpus, memory_mib=row.memory_mib, disk_mib=row.disk_mib,
        reserved_cpus=row.reserved_cpus, reserved_memory_mib=row.reserved_memory_mib,
        reserved_disk_mib=row.reserved_disk_mib,
        ratios=Ratios(row.cpu_ratio, row.memory_ratio, row.disk_ratio), balloon=row.balloon,
        labels=dict(row.labels or {}), state=row.state, accel=row.accel,  # type: ignore[arg-type]
        allowed_projects=(frozenset(row.allowed_projects)
                          if row.allowed_projects is not None else None),
    )


def usage_claim(row: HostRow) -> Claim:
    """A host's counters as one claim: what ``HostArrays`` needs to know of its VMs."""
    return Claim(vm=f"(VMs on {row.name})", host=row.name, cpus=max(row.used_cpus, 0),
                 memory_mib=max(row.used_memory_mib, 0), disk_mib=max(row.used_disk_mib, 0))


def _fits(used: object, amount: int, total: object, reserved: object, ratio: object) -> object:
    return used + amount <= (total - reserved) * ratio + _SLACK  # type: ignore[operator]


def _room_for(amount: Resources) -> list[object]:
    """SQL conditions: the host can take ``amount`` more under its ratios."""
    return [
        _fits(HostRow.used_cpus, amount.cpus, HostRow.cpus, HostRow.reserved_cpus,
              HostRow.cpu_ratio),
        _fits(HostRow.used_memory_mib, amount.memory_mib, HostRow.memory_mib,
              HostRow.reserved_memory_mib, HostRow.memory_ratio),
        _fits(HostRow.used_disk_mib, amount.disk_mib, HostRow.disk_mib,
              HostRow.reserved_disk_mib, HostRow.disk_ratio),
    ]


def _add(amount: Resources, sign: int = 1) -> dict[str, object]:
    return {
        "used_cpus": HostRow.used_cpus + sign * amount.cpus,
        "used_memory_mib": HostRow.used_memory_mib + sign * amount.memory_mib,
        "used_disk_mib": HostRow.used_disk_mib + sign * amount.disk_mib,
        "generation": HostRow.generation + 1,
    }


@dataclass(frozen=True, slots=True)
class Placed:
    """Where a new VM went: its host, its group's id, and the decision that chose it."""

    host: str
    group_id: str | None
    decision: Decision


class Placer:
    """Chooses and claims hosts for VMs; releases and adjusts claims. Thread-safe.

    ``default_weigher`` gives the pool's ranking (``virtpool pool set --weigher``) at the time
    of each placement.
    """

    def __init__(self, default_weigher: Callable[[], str] = lambda: "spread") -> None:
        self._default_weigher = default_weigher
        self._lock = threading.Lock()
        self._arrays: HostArrays | None = None
        self._generations = np.zeros(0, dtype=np.int64)
        self._loaded_at = 0.0
        self._dirty: set[str] = set()
        self._stale = True

    # -- the cache ------------------------------------------------------------------------

    def invalidate(self, host: str | None = None) -> None:
        """Forget one host's figures (None: the whole inventory) before the next placement."""
        with self._lock:
            if host is None:
                self._stale = True
            else:
                self._dirty.add(host)

    def _load(self, session: Session) -> None:
        rows = list(session.scalars(select(HostRow).order_by(HostRow.name)))
        self._arrays = HostArrays.build([host_capacity(r) for r in rows],
                                        [usage_claim(r) for r in rows])
        self._generations = np.array([r.generation for r in rows], dtype=np.int64)
        self._loaded_at = time.monotonic()
        self._dirty.clear()
        self._stale = False

    def _reload_host(self, session: Session, name: str) -> None:
        assert self._arrays is not None
        index = self._arrays.index.get(name)
        row = session.get(HostRow, name, populate_existing=True)
        if index is None or row is None:  # added or removed meanwhile
            self._load(session)
            return
        self._arrays.reload_host(index, host_capacity(row), [usage_claim(row)])
        self._generations[index] = row.generation

    def _fresh_arrays(self, session: Session) -> tuple[HostArrays, bool]:
        """The cached arrays brought up to date; True when just read in full."""
        if self._stale or self._arrays is None \
                or time.monotonic() - self._loaded_at > CACHE_MAX_AGE_S:
            self._load(session)
            assert self._arrays is not None
            return self._arrays, True
        for name in sorted(self._dirty):
            self._reload_host(session, name)
        self._dirty.clear()
        return self._arrays, False

    # -- placing --------------------------------------------------------------------------

    def place_vm(self, session: Session, spec: VMSpec, project_id: str) -> Placed:
        """Choose a host for a new VM and claim it in ``session``'s transaction."""
        group_row = group_by_name(session, project_id, spec.group) if spec.group else None
        request = PlacementRequest(
            vm=spec.name, cpus=spec.cpus, memory_mib=spec.boot_memory_mib,
            disk_mib=spec.disk_mib, project=project_id,
            required_labels=dict(spec.required_labels),
            group=(Group(group_row.name, group_row.policy, group_row.hard)  # type: ignore[arg-type]
                   if group_row else None),
            accel="kvm" if spec.accel == "kvm" else None, weigher=spec.weigher,
        )
        decision = self.claim(session, request, group_id=group_row.id if group_row else None)
        assert decision.host is not None
        return Placed(decision.host, group_row.id if group_row else None, decision)

    def claim(self, session: Session, request: PlacementRequest, *,
              group_id: str | None = None) -> Decision:
        """Place ``request`` and claim its host in ``session``'s transaction.

        Raises InsufficientResources (with the scheduler's explanation) when no host can take
        it, Conflict when every attempt lost a race.
        """
        amount = request.resources()
        fresh = False
        lost = 0
        # Take a connection before the lock: waiting for one while holding the lock would stall
        # the threads that hold connections and need the lock to finish their claims.
        session.connection()
        for _ in range(CLAIM_ATTEMPTS):
            with self._lock:
                arrays, loaded = self._fresh_arrays(session)
                fresh = fresh or loaded
                decision = self._decide(session, arrays, request, group_id)
                if not decision.placed and not fresh:
                    # Never refuse on cached figures: another server may have freed room.
                    self._load(session)
                    fresh = True
                    assert self._arrays is not None
                    decision = self._decide(session, self._arrays, request, group_id)
                if not decision.placed:
                    raise refusal(decision)
                assert decision.host_index is not None and decision.host is not None
                seen = int(self._generations[decision.host_index])
            claimed = _claim_once(session, decision.host, seen, amount)
            if claimed:
                # The cached column is out of date now: reload it before the next decision.
                self.invalidate(decision.host)
                return decision
            # Lost a race: that host changed. Once is usual under load; twice in a row means
            # the cache is behind on many hosts, so read them all again.
            lost += 1
            self.invalidate(decision.host if lost == 1 else None)
        raise Conflict(
            f"placing '{request.vm}' lost {CLAIM_ATTEMPTS} races for hosts in a row",
            hint="many VMs are being created at once; try again")

    def _decide(self, session: Session, arrays: HostArrays, request: PlacementRequest,
                group_id: str | None) -> Decision:
        weigher = self._default_weigher()
        if request.group is None or group_id is None:
            return place(arrays, request, weigher=weigher)
        # Members are counted now, after the generations the claim will be checked against
        # were read: a member placed since then changed its host's generation.
        counts = np.zeros(len(arrays), dtype=np.int32)
        for host, number in session.execute(
                select(VMRow.host, func.count()).where(VMRow.group_id == group_id)
                .group_by(VMRow.host)):
            index = arrays.index.get(host)
            if index is not None:
                counts[index] = number
        arrays.group_counts[request.group.name] = counts
        try:
            return place(arrays, request, weigher=weigher)
        finally:
            del arrays.group_counts[request.group.name]

    # -- releasing and resizing -----------------------------------------------------------

    def release(self, session: Session, host: str, amount: Resources) -> None:
        """Give back a deleted VM's claim, in ``session``'s transaction."""
        session.execute(update(HostRow).where(HostRow.name == host).values(**_add(amount, -1))
                        .execution_options(synchronize_session=False))
        self.invalidate(host)

    def adjust(self, session: Session, host: str, vm: str, delta: Resources) -> None:
        """Grow or shrink a VM's claim by ``delta``; refuse growth the host has no room for."""
        if delta == Resources(0, 0, 0):
            return
        growth = Resources(max(delta.cpus, 0), max(delta.memory_mib, 0), max(delta.disk_mib, 0))
        done = session.execute(
            update(HostRow).where(HostRow.name == host, *_room_for(growth))
            .values(**_add(delta)).execution_options(synchronize_session=False)
        ).rowcount == 1
        self.invalidate(host)
        if not done:
            raise InsufficientResources(
                f"host '{host}' has no room to grow VM '{vm}' by "
                f"{growth.cpus} vCPUs, {growth.memory_mib} MiB of memory and "
                f"{growth.disk_mib} MiB of disk under its ratios",
                hint="free room on the host (`virtpool host list`), or ask for less")


def _claim_once(session: Session, host: str, seen: int, amount: Resources) -> bool:
    """The conditional UPDATE of one claim attempt; False when it lost the race."""
    claim = (update(HostRow)
             .where(HostRow.name == host, HostRow.generation == seen, HostRow.state == "up",
                    *_room_for(amount))
             .values(**_add(amount))
             .execution_options(synchronize_session=False))
    if session.get_bind().dialect.name != "postgresql":
        # SQLite has one writer at a time: a lost attempt holds the database lock, which
        # only makes the next attempt certain to see the latest figures.
        return session.execute(claim).rowcount == 1
    # PostgreSQL keeps the row lock an UPDATE waited for even when the row then fails its
    # WHERE. Held on to, such locks let two creates wait on each other's host (a deadlock);
    # rolled back to a savepoint, a lost attempt holds nothing.
    attempt = session.begin_nested()
    if session.execute(claim).rowcount == 1:
        attempt.commit()
        return True
    attempt.rollback()
    return False


def group_by_name(session: Session, project_id: str, name: str) -> GroupRow:
    """A placement group of ``project_id``; NotFound with a hint when there is none."""
    row = session.scalar(select(GroupRow).where(GroupRow.project_id == project_id,
                                                GroupRow.name == name))
    if row is None:
        raise NotFound(f"no placement group named '{name}'",
                       hint=f"create it with `virtpool group create {name} --policy …`")
    return row


def claim_delta(old: Resources, new: Resources) -> Resources:
    """What a resize adds to (or, negative, takes from) a claim."""
    return Resources(new.cpus - old.cpus, new.memory_mib - old.memory_mib,
                     new.disk_mib - old.disk_mib)


__all__ = ["CLAIM_ATTEMPTS", "Placed", "Placer", "claim_delta", "group_by_name", "host_capacity",
           "usage_claim"]
