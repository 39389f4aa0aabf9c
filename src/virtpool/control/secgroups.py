"""Security groups of a project, the VMs in them, and the firewall each NIC gets from them.

A group of another project is "not found", as for VMs and networks. A group cannot be deleted
while VMs are in it or another group's rule names it. Every change that can alter a NIC's
rules anywhere (a rule, a VM's groups, a member coming or going) calls ``on_change``: the pool
converges the networks of every host, so ``--from-group`` follows its members.
"""

from __future__ import annotations

import ipaddress
import uuid
from collections import defaultdict
from collections.abc import Callable, Sequence

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from virtpool.control.store.tables import (
    NicRow,
    SecGroupRow,
    SecGroupRuleRow,
    VMRow,
    VMSecGroupRow,
)
from virtpool.model.errors import Conflict, InvalidRequest, NotFound
from virtpool.model.network import HostNetworkInput
from virtpool.model.secgroup import (
    MAX_RULES,
    HostRule,
    NicFirewall,
    RuleSpec,
    RuleView,
    SecGroupSpec,
    SecGroupView,
)


class SecGroupService:
    def __init__(self, sessions: sessionmaker[Session],
                 on_change: Callable[[], None] = lambda: None) -> None:
        self._sessions = sessions
        self.on_change = on_change

    def create(self, project_id: str, spec: SecGroupSpec) -> SecGroupView:
        try:
            with self._sessions.begin() as session:
                if _find(session, project_id, spec.name) is not None:
                    raise Conflict(f"a security group named '{spec.name}' exists",
                                   hint="pick another name")
                session.add(SecGroupRow(id=uuid.uuid4().hex, project_id=project_id,
                                        name=spec.name))
        except IntegrityError as err:  # a concurrent create of the same name won
            raise Conflict(f"a security group named '{spec.name}' exists",
                           hint="pick another name") from err
        return self.get(project_id, spec.name)

    def list(self, project_id: str) -> Sequence[SecGroupView]:
        with self._sessions() as session:
            rows = session.scalars(select(SecGroupRow).where(SecGroupRow.project_id == project_id)
                                   .order_by(SecGroupRow.name)).all()
            return [_view(session, row) for row in rows]

    def get(self, project_id: str, name: str) -> SecGroupView:
        with self._sessions() as session:
            return _view(session, secgroup_by_name(session, project_id, name))

    def delete(self, project_id: str, name: str) -> None:
        """Delete a group no VM is in and no other group's rule names."""
        with self._sessions.begin() as session:
            row = secgroup_by_name(session, project_id, name)
            vms = _member_names(session, row.id)
            if vms:
                raise Conflict(f"security group '{name}' still has VMs in it: {', '.join(vms)}",
                               hint="take them out first: `virtpool vm set VM --secgroup ...` "
                                    "(or --no-secgroup), or delete them")
            naming = sorted(set(session.scalars(
                select(SecGroupRow.name).join(SecGroupRuleRow,
                                              SecGroupRuleRow.secgroup_id == SecGroupRow.id)
                .where(SecGroupRuleRow.remote_group_id == row.id,
                       SecGroupRow.id != row.id))))
            if naming:
                raise Conflict(f"rules of security group(s) {', '.join(naming)} name "
                               f"'{name}' as their other side",
                               hint="remove those rules first (`virtpool secgroup rule remove`)")
            session.delete(row)

    # -- rules ----------------------------------------------------------------------------

    def add_rule(self, project_id: str, name: str, spec: RuleSpec) -> RuleView:
        with self._sessions.begin() as session:
            row = secgroup_by_name(session, project_id, name)
            remote_id = None
            if spec.remote_group is not None:
                remote_id = secgroup_by_name(session, project_id, spec.remote_group).id
            if len(row.rules) >= MAX_RULES:
                raise InvalidRequest(f"security group '{name}' has {MAX_RULES} rules already",
                                     hint="remove some, or put the VMs in another group too")
            for rule in row.rules:
                if _spec(rule) == spec:
                    raise Conflict(f"security group '{name}' has this rule already (id {rule.id})",
                                   hint="see `virtpool secgroup show " + name + "`")
            rule_id = uuid.uuid4().hex[:8]
            session.add(SecGroupRuleRow(
                id=rule_id, secgroup_id=row.id, direction=spec.direction, proto=spec.proto,
                port_min=spec.port_min, port_max=spec.port_max, remote_cidr=spec.remote_cidr,
                remote_group_id=remote_id))
        self.on_change()
        return RuleView(id=rule_id, **spec.model_dump())

    def remove_rule(self, project_id: str, name: str, rule_id: str) -> None:
        with self._sessions.begin() as session:
            row = secgroup_by_name(session, project_id, name)
            removed = session.execute(delete(SecGroupRuleRow).where(
                SecGroupRuleRow.secgroup_id == row.id, SecGroupRuleRow.id == rule_id)).rowcount
            if not removed:
                raise NotFound(f"security group '{name}' has no rule '{rule_id}'",
                               hint=f"see its rules' ids with `virtpool secgroup show {name}`")
        self.on_change()

    # -- VMs ------------------------------------------------------------------------------

    def attach(self, session: Session, project_id: str, vm_id: str, names: Sequence[str]) -> None:
        """In the caller's transaction: ``vm_id`` is in exactly the groups ``names``."""
        rows = [secgroup_by_name(session, project_id, n) for n in names]
        if rows and not session.scalar(select(NicRow.id).where(NicRow.vm_id == vm_id).limit(1)):
            raise InvalidRequest("security groups filter a VM's NICs on virtual networks, and "
                                 "this VM has none", hint="give it a --network too")
        session.execute(delete(VMSecGroupRow).where(VMSecGroupRow.vm_id == vm_id))
        for position, row in enumerate(rows):
            session.add(VMSecGroupRow(vm_id=vm_id, secgroup_id=row.id, position=position))

    def set_vm(self, project_id: str, vm_id: str, names: Sequence[str]) -> None:
        """``vm set --secgroup``: the VM's groups become ``names``, applied live."""
        with self._sessions.begin() as session:
            self.attach(session, project_id, vm_id, names)
        self.on_change()

    # -- what hosts apply -----------------------------------------------------------------

    def with_firewalls(self, desired: HostNetworkInput) -> HostNetworkInput:
        """``desired`` with each NIC's firewall: the union of its VM's groups' rules, each
        group on the other side resolved to the addresses of its members' NICs now."""
        vm_ids = {n.vm_id for n in desired.nics}
        if not vm_ids:
            return desired
        with self._sessions() as session:
            memberships = session.execute(select(VMSecGroupRow.vm_id, VMSecGroupRow.secgroup_id)
                                          .where(VMSecGroupRow.vm_id.in_(vm_ids))).all()
            if not memberships:
                return desired
            groups_of: dict[str, set[str]] = defaultdict(set)
            for vm_id, group_id in memberships:
                groups_of[vm_id].add(group_id)
            group_ids = {g for _, g in memberships}
            rules = session.scalars(select(SecGroupRuleRow)
                                    .where(SecGroupRuleRow.secgroup_id.in_(group_ids))).all()
            remote_ids = {r.remote_group_id for r in rules if r.remote_group_id}
            addresses: dict[str, set[str]] = defaultdict(set)
            for group_id, address in session.execute(
                    select(VMSecGroupRow.secgroup_id, NicRow.address)
                    .join(NicRow, NicRow.vm_id == VMSecGroupRow.vm_id)
                    .where(VMSecGroupRow.secgroup_id.in_(remote_ids))):
                addresses[group_id].add(f"{address}/32")
        rules_of: dict[str, list[SecGroupRuleRow]] = defaultdict(list)
        for rule in rules:
            rules_of[rule.secgroup_id].append(rule)

        def firewall(vm_id: str) -> NicFirewall | None:
            if vm_id not in groups_of:
                return None
            own = [r for g in groups_of[vm_id] for r in rules_of[g]]
            host_rules = {d: sorted({_host_rule(r, addresses) for r in own if r.direction == d},
                                    key=_order) for d in ("ingress", "egress")}
            return NicFirewall(ingress=tuple(host_rules["ingress"]),
                               egress=tuple(host_rules["egress"]),
                               egress_restricted=bool(host_rules["egress"]))

        nics = tuple(n.model_copy(update={"firewall": firewall(n.vm_id)}) for n in desired.nics)
        return desired.model_copy(update={"nics": nics})

    def vm_has_groups(self, vm_id: str) -> bool:
        with self._sessions() as session:
            return session.scalar(select(VMSecGroupRow.vm_id)
                                  .where(VMSecGroupRow.vm_id == vm_id).limit(1)) is not None


def secgroup_by_name(session: Session, project_id: str, name: str) -> SecGroupRow:
    """A group of ``project_id``; NotFound (also for another project's) with a hint."""
    row = _find(session, project_id, name)
    if row is None:
        raise NotFound(f"no security group named '{name}'",
                       hint="see `virtpool secgroup list`, or create it with "
                            f"`virtpool secgroup create {name}`")
    return row


def _find(session: Session, project_id: str, name: str) -> SecGroupRow | None:
    return session.scalar(select(SecGroupRow).where(SecGroupRow.project_id == project_id,
                                                    SecGroupRow.name == name))


def _member_names(session: Session, group_id: str) -> list[str]:
    return list(session.scalars(select(VMRow.name).join(VMSecGroupRow,
                                                        VMSecGroupRow.vm_id == VMRow.id)
                                .where(VMSecGroupRow.secgroup_id == group_id)
                                .order_by(VMRow.name)))


def _spec(rule: SecGroupRuleRow) -> RuleSpec:
    return RuleSpec(direction=rule.direction, proto=rule.proto,  # type: ignore[arg-type]
                    port_min=rule.port_min, port_max=rule.port_max, remote_cidr=rule.remote_cidr,
                    remote_group=rule.remote_group.name if rule.remote_group else None)


def _host_rule(rule: SecGroupRuleRow, addresses: dict[str, set[str]]) -> HostRule:
    remotes: tuple[str, ...] | None = None
    if rule.remote_group_id is not None:
        remotes = tuple(sorted(addresses.get(rule.remote_group_id, set()),
                               key=ipaddress.IPv4Network))
    elif rule.remote_cidr is not None:
        remotes = (rule.remote_cidr,)
    return HostRule(proto=rule.proto, port_min=rule.port_min,  # type: ignore[arg-type]
                    port_max=rule.port_max, remotes=remotes)


def _order(rule: HostRule) -> tuple[str, int, int, bool, tuple[str, ...]]:
    return (rule.proto, rule.port_min or 0, rule.port_max or 0, rule.remotes is None,
            rule.remotes or ())


def _view(session: Session, row: SecGroupRow) -> SecGroupView:
    return SecGroupView(
        name=row.name, project=row.project_id,
        rules=[RuleView(id=r.id, **_spec(r).model_dump()) for r in row.rules],
        vms=_member_names(session, row.id))
