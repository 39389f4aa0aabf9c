"""Reading VMs as the API shows them: Core selects of the columns ``VMInfo`` needs.

A page of 100 VMs through the ORM built 100 mapped rows, their identity map and a collection
per relationship, then the model objects from those: most of a list's time (profiled with
py-spy, /work/notes/s3-read.md). Here a page is one statement whatever its length: the VM
rows, the count they are a page of, and the ports, NICs and security groups of all of them at
once, read as plain tuples and turned straight into ``VMInfo``. The statements are built once,
with bound parameters, so that a read costs SQLAlchemy a cache lookup rather than compiling an
expression per request.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from pydantic import TypeAdapter
from sqlalchemy import (
    Connection,
    Integer,
    String,
    bindparam,
    cast,
    func,
    literal,
    null,
    select,
    tuple_,
    union_all,
)
from sqlalchemy.sql import Executable

from virtpool.control.store.tables import (
    NetworkRow,
    NicRow,
    PortRow,
    SecGroupRow,
    VMRow,
    VMSecGroupRow,
)
from virtpool.model.vm import VMInfo

_VMS = VMRow.__table__
# The columns VMInfo shows, under their VMInfo names where those differ.
COLUMNS = ("id", "name", "project_id", "image", "cpus", "memory_mib", "disk_mib", "kernel_args",
           "accel", "max_memory_mib", "cpu_cap_pct", "cpu_weight", "disk_iops", "disk_bps",
           "cpu_affinity", "state", "error", "host", "pinned_host", "created_at", "updated_at",
           "started_at", "boot_timeout_s", "stopped_by", "cloud_init")
_INFOS = TypeAdapter(list[VMInfo])
_FIELDS = tuple({"project_id": "project", "pinned_host": "pinned"}.get(c, c) for c in COLUMNS)
_VM_COLUMNS = [_VMS.c[name] for name in COLUMNS]
# The ports, NICs and security groups of a set of VMs in one query (one round trip, not three):
# (kind, vm, position, text, text, text, number), in each VM's order.
_TEXT, _NUMBER = cast(null(), String), cast(null(), Integer)


def _children(vm_is: Callable[[Any], Any]) -> Any:
    """The ports, NICs and security groups of the VMs ``vm_is(vm_id column)`` picks, as one
    UNION ALL."""
    return union_all(
        select(literal("port").label("kind"), PortRow.vm_id.label("vm"),
               PortRow.host_port.label("position"), _TEXT.label("a"), _TEXT.label("b"),
               _TEXT.label("c"), PortRow.guest_port.label("n"))
        .where(vm_is(PortRow.vm_id)),
        select(literal("nic"), NicRow.vm_id, NicRow.position, NetworkRow.name, NicRow.mac,
               NicRow.address, _NUMBER)
        .join(NetworkRow, NetworkRow.id == NicRow.network_id).where(vm_is(NicRow.vm_id)),
        select(literal("secgroup"), VMSecGroupRow.vm_id, VMSecGroupRow.position, SecGroupRow.name,
               _TEXT, _TEXT, _NUMBER)
        .join(SecGroupRow, SecGroupRow.id == VMSecGroupRow.secgroup_id)
        .where(vm_is(VMSecGroupRow.vm_id)),
    )


_REF = bindparam("ref")
_PROJECT = bindparam("project")
# An id match wins: internal paths pass ids, and another project's VM may be named like one.
_MATCH = ((_VMS.c.name == _REF) | (_VMS.c.id == _REF),)
_IN_PROJECT = (*_MATCH, _VMS.c.project_id == _PROJECT)


def _one_with_children(match: tuple[Any, ...]) -> Any:
    """The VM ``match`` finds and its children in one statement (one round trip, where
    PostgreSQL took two): a row per child, the VM's columns repeated, or one row with none."""
    def first(*columns: Any) -> Any:
        # The id breaks ties (two projects' VMs of one name), so that both selects pick one VM.
        return (select(*columns).where(*match).order_by((_VMS.c.id == _REF).desc(), _VMS.c.id)
                .limit(1))

    vm = first(*_VM_COLUMNS).subquery("vm")
    one_id = first(_VMS.c.id).scalar_subquery()
    children = _children(lambda vm_id: vm_id == one_id).subquery("child")
    return (select(*vm.c, children.c.kind, children.c.position, children.c.a, children.c.b,
                   children.c.c, children.c.n)
            .outerjoin(children, children.c.vm == vm.c.id)
            .order_by(children.c.kind, children.c.position))


_ONE = _one_with_children(_MATCH)
_ONE_IN_PROJECT = _one_with_children(_IN_PROJECT)

_LIMIT, _OFFSET = bindparam("limit"), bindparam("offset")
_AFTER = tuple_(_VMS.c.name, _VMS.c.id) > tuple_(bindparam("after_name"), bindparam("after_id"))
_PAGE = select(*_VM_COLUMNS).order_by(_VMS.c.name, _VMS.c.id).limit(_LIMIT).offset(_OFFSET)
_PAGES = {  # (in one project, after a cursor) -> statement
    (False, False): _PAGE,
    (True, False): _PAGE.where(_VMS.c.project_id == _PROJECT),
    (False, True): _PAGE.where(_AFTER),
    (True, True): _PAGE.where(_VMS.c.project_id == _PROJECT, _AFTER),
}
_COUNT = select(func.count()).select_from(_VMS)
_COUNT_IN_PROJECT = _COUNT.where(_VMS.c.project_id == _PROJECT)


def _page_with_children(page: Any, count: Any) -> Any:
    """A page, the total it is a page of, and the page's children in one statement (one round
    trip, where PostgreSQL took three): a row per child, the VM's columns and the total
    repeated, or one row for a VM with none; in page order."""
    rows = page.cte("page")
    children = _children(lambda vm_id: vm_id.in_(select(rows.c.id))).subquery("child")
    return (select(*rows.c, count.scalar_subquery().label("total"), children.c.kind,
                   children.c.position, children.c.a, children.c.b, children.c.c, children.c.n)
            .outerjoin(children, children.c.vm == rows.c.id)
            .order_by(rows.c.name, rows.c.id, children.c.kind, children.c.position))


_PAGES_WITH_CHILDREN = {key: _page_with_children(statement, _COUNT_IN_PROJECT if key[0] else _COUNT)
                        for key, statement in _PAGES.items()}


def one_query(ref: str, project_id: str | None = None) -> tuple[Executable, dict[str, Any]]:
    """The statement and parameters that read the VM named ``ref`` (or with id ``ref``),
    within ``project_id`` when given; :func:`one_of` makes the VM of its rows."""
    if project_id is None:
        return _ONE, {"ref": ref}
    return _ONE_IN_PROJECT, {"ref": ref, "project": project_id}


def one_of(rows: Sequence[Sequence[Any]]) -> VMInfo | None:
    """The VM in the rows of :func:`one_query`'s statement, or None when there are none."""
    if not rows:
        return None
    width = len(COLUMNS)
    ports, nics, secgroups = _children_by_vm(
        (row[width], row[0], *row[width + 1:]) for row in rows if row[width] is not None)
    vm_id = rows[0][0]
    return info_of(rows[0][:width], ports.get(vm_id, []), nics.get(vm_id, []), secgroups.get(vm_id, []))


def one(connection: Connection, ref: str, project_id: str | None = None) -> VMInfo | None:
    """The VM named ``ref`` (or with id ``ref``), within ``project_id`` when given."""
    statement, params = one_query(ref, project_id)
    return one_of(connection.execute(statement, params).all())


def page(connection: Connection, *, limit: int, offset: int = 0, project_id: str | None = None,
         after: tuple[str, str] | None = None) -> tuple[list[VMInfo], int]:
    """VMs in (name, id) order, ``offset`` rows in or after ``after`` = (name, id); one
    project's when ``project_id`` is given. And how many VMs there are in all (or in it)."""
    params: dict[str, Any] = {"limit": limit, "offset": offset, "project": project_id}
    if after is not None:
        params["after_name"], params["after_id"] = after
    rows = connection.execute(_PAGES_WITH_CHILDREN[project_id is not None, after is not None], params).all()
    if not rows:  # past the end, or no VMs: the total alone
        return [], connection.execute(_COUNT_IN_PROJECT if project_id is not None else _COUNT,
                                      {"project": project_id}).scalar_one()
    width = len(COLUMNS)
    total = rows[0][width]
    vms: list[Sequence[Any]] = []
    children = []
    for row in rows:
        if not vms or vms[-1][0] != row[0]:
            vms.append(row[:width])
        if row[width + 1] is not None:
            children.append((row[width + 1], row[0], *row[width + 2:]))
    ports, nics, secgroups = _children_by_vm(children)
    # Column values by position (a row is a tuple in COLUMNS order): no lookup by name. The
    # page validated in one call: a third cheaper than a model_validate per VM.
    return _INFOS.validate_python([
        _fields_of(values, ports.get(values[0], []), nics.get(values[0], []), secgroups.get(values[0], []))
        for values in vms]), total


def _children_by_vm(children: Iterable[Sequence[Any]]) -> tuple[
        dict[str, list[dict[str, int]]], dict[str, list[dict[str, str]]], dict[str, list[str]]]:
    """Ports, NICs and security group names by VM id, from (kind, vm, position, a, b, c, n)
    rows in each VM's order."""
    ports: dict[str, list[dict[str, int]]] = defaultdict(list)
    nics: dict[str, list[dict[str, str]]] = defaultdict(list)
    secgroups: dict[str, list[str]] = defaultdict(list)
    for kind, vm_id, position, a, b, c, n in children:
        if kind == "port":
            ports[vm_id].append({"host": position, "guest": n})
        elif kind == "nic":
            nics[vm_id].append({"network": a, "mac": b, "address": c})
        else:
            secgroups[vm_id].append(a)
    return ports, nics, secgroups


def info_of(values: Sequence[Any], ports: list[dict[str, int]], nics: list[dict[str, str]],
            secgroups: list[str]) -> VMInfo:
    """``VMInfo`` from a VM's column values (in ``COLUMNS`` order) and its ports ({host,
    guest}), NICs ({network, mac, address}) and security group names, in order."""
    return VMInfo.model_validate(_fields_of(values, ports, nics, secgroups))


def _fields_of(values: Sequence[Any], ports: list[dict[str, int]], nics: list[dict[str, str]],
               secgroups: list[str]) -> dict[str, Any]:
    """``VMInfo``'s fields, as :func:`info_of` takes them."""
    fields = dict(zip(_FIELDS, values, strict=True))
    fields["pinned"] = fields["pinned"] is not None
    fields["cloud_init"] = fields["cloud_init"] or None
    fields["ports"], fields["nics"], fields["secgroups"] = ports, nics, secgroups
    fields["address"] = (nics[0]["address"] if nics
                         else f"127.0.0.1:{ports[0]['host']}" if ports else None)
    return fields
