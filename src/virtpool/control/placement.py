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
an optimisation only — the generation check makes every claim exact. A claim this process
won is counted into the cache at once, with the generation its UPDATE wrote (seen + 1), rather
than by reading the row back: should the claim's transaction roll back, the cached generation
matches no row, so the next claim on that host loses its race and reloads the host. Other
changes this process makes (releases, resizes, host edits) reload the host before the next
placement; every ``CACHE_MAX_AGE_S``, after two lost races in a row and before any refusal, one
scan of names and generations finds the hosts others changed (every change to a host row bumps
its generation), so a refusal is always decided on fresh figures.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy import bindparam, func, or_, select, update
from sqlalchemy.engine import Connection, Dialect, Row
from sqlalchemy.orm import Session

from virtpool.control.scheduler import Decision, HostArrays, place, refusal
from virtpool.control.store.tables import GroupRow, HostRow, VMRow
from virtpool.model.errors import Conflict, InsufficientResources, NotFound
from virtpool.model.resources import (
    Claim,
    Group,
    HostCapacity,
    PlacementRequest,
    Ratios,
    Resources,
)
from virtpool.model.spec import VMSpec

# Enough for a burst of creates racing for the same few hosts; a placement that loses this
# often is told to try again rather than spinning.
CLAIM_ATTEMPTS = 12
# Changes made by other servers sharing the database are seen at least this often.
CACHE_MAX_AGE_S = 5.0
# As in model.resources.capacity_under_ratio: 100 × 0.29 must count as 29.
_SLACK = 1e-9


def host_capacity(row: HostRow | Row[Any]) -> HostCapacity:
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


def usage_claim(row: HostRow | Row[Any]) -> Claim:
    """A host's counters as one claim: what ``HostArrays`` needs to know of its VMs."""
    return Claim(vm=f"(VMs on {row.name})", host=row.name, cpus=max(row.used_cpus, 0),
                 memory_mib=max(row.used_memory_mib, 0), disk_mib=max(row.used_disk_mib, 0))


# The statements are built once, with bound parameters, so that a claim costs SQLAlchemy a
# cache lookup rather than building and compiling an expression tree per VM.
_HOSTS = HostRow.__table__
_CPUS, _MEMORY, _DISK = bindparam("d_cpus"), bindparam("d_memory"), bindparam("d_disk")
_G_CPUS, _G_MEMORY, _G_DISK = bindparam("g_cpus"), bindparam("g_memory"), bindparam("g_disk")
# The host can take the growth (d_* where positive) under its ratios. A resource that does not
# grow is not checked, so a host already over a ratio (lowered hardware figures, an upgraded
# database) can still shrink its VMs.
_ROOM = (
    or_(_G_CPUS == 0, _HOSTS.c.used_cpus + _G_CPUS
        <= (_HOSTS.c.cpus - _HOSTS.c.reserved_cpus) * _HOSTS.c.cpu_ratio + _SLACK),
    or_(_G_MEMORY == 0, _HOSTS.c.used_memory_mib + _G_MEMORY
        <= (_HOSTS.c.memory_mib - _HOSTS.c.reserved_memory_mib) * _HOSTS.c.memory_ratio + _SLACK),
    or_(_G_DISK == 0, _HOSTS.c.used_disk_mib + _G_DISK
        <= (_HOSTS.c.disk_mib - _HOSTS.c.reserved_disk_mib) * _HOSTS.c.disk_ratio + _SLACK),
)
_ADD = {"used_cpus": _HOSTS.c.used_cpus + _CPUS,
        "used_memory_mib": _HOSTS.c.used_memory_mib + _MEMORY,
        "used_disk_mib": _HOSTS.c.used_disk_mib + _DISK,
        "generation": _HOSTS.c.generation + 1}
_HOST = _HOSTS.c.name == bindparam("host")
CLAIM = (update(_HOSTS)
         .where(_HOST, _HOSTS.c.generation == bindparam("seen"), _HOSTS.c.state == "up", *_ROOM)
         .values(_ADD))
ADJUST = update(_HOSTS).where(_HOST, *_ROOM).values(_ADD)
RELEASE = update(_HOSTS).where(_HOST).values(_ADD)


def _params(host: str, delta: Resources) -> dict[str, object]:
    """Parameters of the statements above: ``delta`` added, its positive part checked."""
    return {"host": host, "d_cpus": delta.cpus, "d_memory": delta.memory_mib,
            "d_disk": delta.disk_mib, "g_cpus": max(delta.cpus, 0),
            "g_memory": max(delta.memory_mib, 0), "g_disk": max(delta.disk_mib, 0)}


@dataclass(frozen=True, slots=True)
class Placed:
    """Where a new VM went: its host, its group's id, and the decision that chose it."""

    host: str
    group_id: str | None
    decision: Decision


class Placer:
    """Chooses and claims hosts for VMs; releases and adjusts claims. Thread-safe.

    ``default_weigher`` gives the pool's ranking (``virtpool pool set --weigher``) at the time
    of each placement; ``observe`` is told how many seconds each VM's placement took (/metrics).
    """

    def __init__(self, default_weigher: Callable[[], str] = lambda: "spread",
                 observe: Callable[[float], None] = lambda seconds: None) -> None:
        self._default_weigher = default_weigher
        self._observe = observe
        self._lock = threading.Lock()
        self._arrays: HostArrays | None = None
        # Each cached host's generation, by index: a list, as claims read and write one at a time.
        self._generations: list[int] = []
        self._loaded_at = 0.0
        self._dirty: set[str] = set()
        self._stale = True  # read everything again before the next decision
        self._behind = False  # check every host's generation before the next decision

    # -- the cache ------------------------------------------------------------------------

    def invalidate(self, host: str | None = None) -> None:
        """Forget one host's figures (None: the whole inventory) before the next placement."""
        with self._lock:
            if host is None:
                self._stale = True
            else:
                self._dirty.add(host)

    def _load(self, connection: Connection) -> HostArrays:
        rows = connection.execute(select(_HOSTS).order_by(_HOSTS.c.name)).all()
        arrays = self._arrays = HostArrays.build([host_capacity(r) for r in rows],
                                                 [usage_claim(r) for r in rows])
        self._generations = [r.generation for r in rows]
        self._loaded_at = time.monotonic()
        self._dirty.clear()
        self._stale = self._behind = False
        return arrays

    def _cached(self, connection: Connection) -> HostArrays:
        """The cached arrays as they stand (read from the database if never read yet)."""
        return self._arrays if self._arrays is not None else self._load(connection)

    def _reload_host(self, connection: Connection, name: str) -> None:
        arrays = self._cached(connection)
        index = arrays.index.get(name)
        row = connection.execute(select(_HOSTS).where(_HOSTS.c.name == name)).first()
        if index is None or row is None:  # added or removed meanwhile
            self._load(connection)
            return
        arrays.reload_host(index, host_capacity(row), [usage_claim(row)])
        self._generations[index] = row.generation

    def _catch_up(self, connection: Connection) -> None:
        """Reload the hosts whose generation moved since they were read: one narrow scan of
        names and generations, then a row per changed host (or all, when many changed)."""
        current = connection.execute(select(_HOSTS.c.name, _HOSTS.c.generation)).all()
        index = self._cached(connection).index
        if len(current) != len(index) or any(name not in index for name, _ in current):
            self._load(connection)
            return
        changed = [name for name, gen in current if self._generations[index[name]] != gen]
        if len(changed) > len(current) // 10:
            self._load(connection)
            return
        for name in changed:
            self._reload_host(connection, name)
        self._dirty.clear()
        self._behind = False
        self._loaded_at = time.monotonic()

    def _fresh_arrays(self, connection: Connection) -> tuple[HostArrays, bool]:
        """The cached arrays brought up to date; True when checked against every host now."""
        if self._stale or self._arrays is None:
            self._load(connection)
        elif self._behind or time.monotonic() - self._loaded_at > CACHE_MAX_AGE_S:
            self._catch_up(connection)
        else:
            if self._dirty:
                for name in sorted(self._dirty):
                    self._reload_host(connection, name)
                self._dirty.clear()
            return self._cached(connection), False
        return self._cached(connection), True

    # -- placing --------------------------------------------------------------------------

    def default_weigher(self) -> str:
        """The pool's ranking now. Read it before opening the claim's transaction: it may
        need a database connection of its own."""
        return self._default_weigher()

    def place_vm(self, session: Session, spec: VMSpec, project_id: str, *,
                 weigher: str | None = None) -> Placed:
        """Choose a host for a new VM and claim it in ``session``'s transaction."""
        group_row = group_by_name(session, project_id, spec.group) if spec.group else None
        if spec.host is not None and session.get(HostRow, spec.host) is None:
            raise NotFound(f"no host named '{spec.host}' to pin VM '{spec.name}' to",
                           hint="see `virtpool host list` for the pool's hosts")
        request = PlacementRequest(
            vm=spec.name, cpus=spec.cpus, memory_mib=spec.boot_memory_mib,
            disk_mib=spec.disk_mib, project=project_id,
            required_labels=dict(spec.required_labels),
            group=(Group(group_row.name, group_row.policy, group_row.hard)  # type: ignore[arg-type]
                   if group_row else None),
            accel="kvm" if spec.accel == "kvm" else None, weigher=spec.weigher,
            host_cpus=host_cpus_needed(spec), host=spec.host,
        )
        started = time.perf_counter()
        try:
            decision = self.claim(session, request, group_id=group_row.id if group_row else None,
                                  weigher=weigher)
        finally:
            self._observe(time.perf_counter() - started)
        if decision.host is None:  # (claim returns placed decisions only)
            raise refusal(decision)
        return Placed(decision.host, group_row.id if group_row else None, decision)

    def claim(self, bind: Session | Connection, request: PlacementRequest, *,
              group_id: str | None = None, weigher: str | None = None) -> Decision:
        """Place ``request`` and claim its host in ``bind``'s transaction.

        Everything runs on one Core connection (a Session's, or the one given): a caller
        with no ORM work to do passes a Connection and skips the Session's own costs.

        Raises InsufficientResources (with the scheduler's explanation) when no host can take
        it, Conflict when every attempt lost a race.
        """
        amount = request.resources()
        fresh = False
        # Nothing that may wait for a database connection happens under the lock: waiting for
        # one there would stall the threads that hold connections and need the lock to finish.
        if weigher is None:
            weigher = self._default_weigher()
        connection = bind.connection() if isinstance(bind, Session) else bind
        for attempt in range(CLAIM_ATTEMPTS):
            with self._lock:
                arrays, loaded = self._fresh_arrays(connection)
                fresh = fresh or loaded
                decision = self._decide(connection, arrays, request, group_id, weigher)
                if not decision.placed and not fresh:
                    # Never refuse on cached figures: another server may have freed room.
                    self._catch_up(connection)
                    fresh = True
                    arrays = self._cached(connection)
                    decision = self._decide(connection, arrays, request, group_id, weigher)
                if decision.host_index is None or decision.host is None:
                    raise refusal(decision)
                index, host = decision.host_index, decision.host
                seen = self._generations[index]
            claimed = _claim_once(connection, host, seen, amount)
            if claimed:
                with self._lock:
                    self._count_claim(arrays, index, seen, request.vm, amount)
                return decision
            # Lost a race: that host changed. Once is usual under load; twice in a row means
            # the cache is behind on other hosts too, so check them all.
            with self._lock:
                self._dirty.add(host)
                self._behind = self._behind or attempt > 0
        raise Conflict(
            f"placing '{request.vm}' lost {CLAIM_ATTEMPTS} races for hosts in a row",
            hint="many VMs are being created at once; try again")

    def _count_claim(self, arrays: HostArrays, index: int, seen: int, vm: str,
                     amount: Resources) -> None:
        """Count a won claim into the cache: the host's row now holds ``amount`` more and the
        generation ``seen + 1`` (unless its transaction rolls back; see the module doc)."""
        if self._arrays is not arrays or self._generations[index] != seen:
            self._dirty.add(arrays.names[index])  # reloaded or changed meanwhile: read it again
            return
        arrays.add_usage(index, amount)
        self._generations[index] = seen + 1

    def _decide(self, connection: Connection, arrays: HostArrays, request: PlacementRequest,
                group_id: str | None, weigher: str) -> Decision:
        # Without counts (place's counts=False): only the host is read of a placed decision
        # (a refusal is always counted, for its explanation).
        if request.group is None or group_id is None:
            return place(arrays, request, weigher=weigher, counts=False)
        # Members are counted now, after the generations the claim will be checked against
        # were read: a member placed since then changed its host's generation.
        counts = np.zeros(len(arrays), dtype=np.int32)
        for host, number in connection.execute(
                select(VMRow.host, func.count()).where(VMRow.group_id == group_id)
                .group_by(VMRow.host)):
            index = arrays.index.get(host)
            if index is not None:
                counts[index] = number
        arrays.group_counts[request.group.name] = counts
        try:
            return place(arrays, request, weigher=weigher, counts=False)
        finally:
            del arrays.group_counts[request.group.name]

    # -- releasing and resizing -----------------------------------------------------------

    def release(self, session: Session, host: str, amount: Resources) -> None:
        """Give back a deleted VM's claim, in ``session``'s transaction."""
        back = Resources(-amount.cpus, -amount.memory_mib, -amount.disk_mib)
        session.connection().execute(RELEASE, _params(host, back))
        self.invalidate(host)

    def adjust(self, session: Session, host: str, vm: str, delta: Resources, *,
               host_cpus: int = 0, check: bool = True) -> None:
        """Grow or shrink a VM's claim on its host by ``delta``, in ``session``'s transaction.
        Unless ``check`` is False (undoing a change), what grows goes through the scheduler's
        filters for a resize (``GROWTH_FILTERS``: the host CPUs its new shape needs,
        ``host_cpus``, 0 when that shape did not change; room for the growth under the host's
        ratios) and then the claim, which refuses what a racing change took meanwhile."""
        if check:
            self._check_growth(session, host, vm, delta, host_cpus)
        if delta == Resources(0, 0, 0):
            return
        params = _params(host, delta)
        done = session.connection().execute(ADJUST if check else RELEASE, params).rowcount == 1
        self.invalidate(host)
        if not done:
            growth = [f"{amount} {unit}" for amount, unit in (
                (params["g_cpus"], "vCPUs"), (params["g_memory"], "MiB of memory"),
                (params["g_disk"], "MiB of disk")) if amount]
            raise InsufficientResources(
                f"host '{host}' has no room to grow VM '{vm}' by {', '.join(growth)} under its "
                "ratios",
                hint="free room on the host (`virtpool host list`), or ask for less")


    def _check_growth(self, session: Session, host: str, vm: str, delta: Resources,
                      host_cpus: int) -> None:
        request = PlacementRequest(vm=vm, cpus=max(delta.cpus, 0),
                                   memory_mib=max(delta.memory_mib, 0),
                                   disk_mib=max(delta.disk_mib, 0), host=host,
                                   host_cpus=host_cpus, growth=True)
        if request.resources() == Resources(0, 0, 0) and not host_cpus:
            return  # nothing grows: a shrink always fits, even on a host over its ratios
        connection = session.connection()  # before the lock: see claim()
        with self._lock:
            arrays, _ = self._fresh_arrays(connection)
            self._reload_host(connection, host)  # the host as this transaction sees it
            decision = place(self._arrays or arrays, request)  # (a reload may replace them)
        if not decision.placed:
            raise refusal(decision)


# Plain SQL rather than session.begin_nested(): SQLAlchemy would RELEASE a won attempt's
# savepoint at once, a round trip that COMMIT makes needless. Reusing the name is fine: a
# new savepoint of the same name hides the older one until it is released or rolled back.
_SAVEPOINT = "SAVEPOINT virtpool_claim"
_ROLLBACK_TO_SAVEPOINT = "ROLLBACK TO SAVEPOINT virtpool_claim"


# Columns SQLAlchemy fills on every UPDATE (updated_at): the driver-level claim must too.
_ON_UPDATE = {column.key: column.onupdate.arg for column in _HOSTS.c
              if column.onupdate is not None}  # type: ignore[attr-defined]


@functools.lru_cache(maxsize=4)
def _compiled_claim(dialect: Dialect) -> tuple[str, dict[str, Any]]:
    """``CLAIM`` as the driver's SQL and its fixed parameters, compiled once per dialect."""
    compiled = CLAIM.compile(dialect=dialect)
    return compiled.string, dict(compiled.params)


def _driver_params(fixed: dict[str, Any], params: dict[str, object]) -> dict[str, Any]:
    values = {**fixed, **params}
    for key, make in _ON_UPDATE.items():
        values[key] = make(None)  # SQLAlchemy's wrapper of a plain callable takes a context
    return values


def _claim_once(connection: Connection, host: str, seen: int, amount: Resources) -> bool:
    """The conditional UPDATE of one claim attempt; False when it lost the race."""
    params = {**_params(host, amount), "seen": seen}
    if connection.dialect.name != "postgresql":
        # SQLite has one writer at a time: a lost attempt holds the database lock, which
        # only makes the next attempt certain to see the latest figures.
        return connection.execute(CLAIM, params).rowcount == 1
    # PostgreSQL keeps the row lock an UPDATE waited for even when the row then fails its
    # WHERE. Held on to, such locks let two creates wait on each other's host (a deadlock);
    # rolled back to a savepoint, a lost attempt holds nothing. A won attempt leaves its
    # savepoint to the transaction's COMMIT, which releases it: no RELEASE round trip. The
    # savepoint and the UPDATE go in one round trip (psycopg's pipeline mode); the
    # transaction is SQLAlchemy's, already begun on this connection.
    sql, fixed = _compiled_claim(connection.dialect)
    driver = connection.connection.driver_connection
    with driver.pipeline():  # type: ignore[union-attr]
        driver.execute(_SAVEPOINT)  # type: ignore[union-attr]
        cursor = driver.execute(sql, _driver_params(fixed, params))  # type: ignore[union-attr]
    if cursor.rowcount == 1:
        return True
    connection.exec_driver_sql(_ROLLBACK_TO_SAVEPOINT)
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
           "host_cpus_for", "usage_claim"]


def host_cpus_needed(spec: VMSpec) -> int:
    """The fewest host CPUs a VM's pinning and CPU cap make sense on (its vCPUs aside)."""
    return host_cpus_for(spec.cpu_affinity, spec.cpu_cap_pct)


def host_cpus_for(affinity: list[int] | None, cap_pct: int | None, vcpus: int = 0) -> int:
    """The fewest host CPUs ``vcpus`` vCPUs pinned to ``affinity`` under a ``cap_pct`` cap
    make sense on."""
    pinned = max(affinity) + 1 if affinity else 0
    capped = -(-cap_pct // 100) if cap_pct else 0
    return max(pinned, capped, vcpus)
