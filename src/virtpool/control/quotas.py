"""Project quotas: charged and released in the same transaction as the VM rows they count.

A charge is one conditional UPDATE (``used + delta <= quota`` for every resource that grows), so
that concurrent creates can never overrun a quota, on SQLite and PostgreSQL alike: the row lock
the UPDATE takes makes the second of two racing charges see the first one's count.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import ColumnElement, or_, select, update
from sqlalchemy.orm import InstrumentedAttribute, Session

from virtpool.control.store.tables import ProjectRow
from virtpool.model.errors import InsufficientResources, NotFound
from virtpool.model.project import Quota, Usage
from virtpool.model.units import format_mib


class QuotaExceeded(InsufficientResources):
    """The project's quota does not leave room for what was asked; nothing was changed."""

    title = "quota exceeded"


@dataclass(frozen=True)
class Resource:
    field: str  # of Usage and Quota
    used: InstrumentedAttribute[int]
    quota: InstrumentedAttribute[int | None]
    option: str  # of `virtpool project quota set`


RESOURCES = (
    Resource("vms", ProjectRow.used_vms, ProjectRow.quota_vms, "--vms"),
    Resource("cpus", ProjectRow.used_cpus, ProjectRow.quota_cpus, "--cpus"),
    Resource("memory_mib", ProjectRow.used_memory_mib, ProjectRow.quota_memory_mib, "--memory"),
    Resource("disk_mib", ProjectRow.used_disk_mib, ProjectRow.quota_disk_mib, "--disk"),
)


def vm_usage(cpus: int, max_memory_mib: int, disk_mib: int) -> Usage:
    """What one VM counts against its project."""
    return Usage(cpus=cpus, memory_mib=max_memory_mib, disk_mib=disk_mib, vms=1)


def charge(session: Session, project_id: str, delta: Usage, *, check: bool = True) -> None:
    """Add ``delta`` to the project's usage, or raise QuotaExceeded naming the quota it hits.

    Only resources that grow are checked: shrinking is always allowed, even under a quota
    that was lowered below what is in use. ``check=False`` (undoing a change) checks nothing.
    """
    conditions: list[ColumnElement[bool]] = [ProjectRow.id == project_id]
    values = {}
    for res in RESOURCES:
        amount = getattr(delta, res.field)
        if amount:
            values[res.used.key] = res.used + amount
        if amount > 0 and check:
            conditions.append(or_(res.quota.is_(None), res.used + amount <= res.quota))
    if not values:
        return
    if session.execute(update(ProjectRow).where(*conditions).values(values)).rowcount == 1:
        return
    row = session.execute(
        select(ProjectRow).where(ProjectRow.id == project_id).execution_options(populate_existing=True)
    ).scalar_one_or_none()
    if row is None:
        raise NotFound(f"no project named '{project_id}'", hint="see `virtpool project list`")
    raise exceeded(row, delta)


def release(session: Session, project_id: str, usage: Usage) -> None:
    """Give back what a deleted (or shrunk) VM held."""
    charge(session, project_id, Usage().minus(usage))


def exceeded(row: ProjectRow, delta: Usage) -> QuotaExceeded:
    """The error for the first quota ``delta`` does not fit under, with the usage behind it."""
    for res in RESOURCES:
        amount, used, limit = getattr(delta, res.field), getattr(row, res.used.key), getattr(row, res.quota.key)
        if amount > 0 and limit is not None and used + amount > limit:
            break
    else:  # the row changed between the UPDATE and the read: report the VM count
        res = RESOURCES[0]
        amount, used, limit = delta.vms, row.used_vms, row.quota_vms
    fix = f"raise the quota with `virtpool project quota set {row.name} {res.option} N`"
    if res.field == "vms":
        return QuotaExceeded(
            f"project '{row.name}' is at its quota of {limit} VMs ({used} used)",
            hint=f"delete a VM or {fix}")
    shown = format_mib if res.field.endswith("_mib") else str
    what = res.field.removesuffix("_mib")
    return QuotaExceeded(
        f"project '{row.name}' would exceed its {what} quota: {shown(amount)} more asked, "
        f"{shown(used)} of {shown(limit)} used",
        hint=f"ask for less, free some, or {fix}")


def quota_of(row: ProjectRow) -> Quota:
    return Quota(**{res.field: getattr(row, res.quota.key) for res in RESOURCES})


def usage_of(row: ProjectRow) -> Usage:
    return Usage(**{res.field: getattr(row, res.used.key) for res in RESOURCES})


def over_quota_notes(row: ProjectRow) -> list[str]:
    """One note for each quota set below what the project uses already."""
    notes = []
    for res in RESOURCES:
        used, limit = getattr(row, res.used.key), getattr(row, res.quota.key)
        if limit is not None and used > limit:
            shown = format_mib if res.field.endswith("_mib") else str
            notes.append(
                f"the {res.field.removesuffix('_mib')} quota ({shown(limit)}) is below what is in use "
                f"({shown(used)}): existing VMs keep running, but nothing may grow until usage is under it")
    return notes
