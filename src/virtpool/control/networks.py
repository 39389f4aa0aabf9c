"""Networks of a project and their IPAM: each NIC gets a MAC and an address that it keeps.

A subnet may not overlap another network of the same project (its VMs could not tell them
apart); other projects may reuse it, since projects never share a network. A network of
another project is "not found", as for VMs. A network with NICs on it cannot be deleted.
"""

from __future__ import annotations

import ipaddress
import secrets
import uuid
from collections.abc import Sequence
from urllib.parse import urlsplit

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from virtpool.control.store.tables import HostRow, NetworkRow, NicRow, PortRow, ProjectRow, VMRow
from virtpool.model.errors import Conflict, InvalidRequest, NotFound
from virtpool.model.network import (
    DEFAULT_MTU,
    DEFAULT_SUBNET_POOL,
    VNI_FIRST,
    HostForward,
    HostNetwork,
    HostNetworkInput,
    HostNic,
    NetworkSpec,
    NetworkView,
    NicRequest,
    NicView,
    gateway_of,
)
from virtpool.model.spec import PortForward

MAX_NICS = 8


class NetworkService:
    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self._sessions = sessions

    def create(self, project_id: str, spec: NetworkSpec) -> NetworkView:
        try:
            with self._sessions.begin() as session:
                # The project's row first: two creates in one project take turns, so neither
                # can miss the other's subnet.
                session.execute(update(ProjectRow).where(ProjectRow.id == project_id)
                                .values(id=ProjectRow.id))
                taken = {r.name: ipaddress.IPv4Network(r.subnet) for r in session.scalars(
                    select(NetworkRow).where(NetworkRow.project_id == project_id))}
                if spec.name in taken:
                    raise Conflict(f"a network named '{spec.name}' exists", hint="pick another name")
                subnet = _pick_subnet(spec.subnet, taken)
                vni = (session.scalar(select(func.max(NetworkRow.vni))) or VNI_FIRST - 1) + 1
                session.add(NetworkRow(id=uuid.uuid4().hex, project_id=project_id,
                                       name=spec.name, subnet=str(subnet), nat=spec.nat,
                                       vni=vni, mtu=DEFAULT_MTU))
        except IntegrityError as err:  # another project's create took the same VNI just now
            raise Conflict(f"network '{spec.name}' could not be created at this moment",
                           hint="try again") from err
        return self.get(project_id, spec.name)

    def list(self, project_id: str) -> Sequence[NetworkView]:
        with self._sessions() as session:
            rows = session.scalars(select(NetworkRow).where(NetworkRow.project_id == project_id)
                                   .order_by(NetworkRow.name)).all()
            return [self._view(session, row) for row in rows]

    def get(self, project_id: str, name: str) -> NetworkView:
        with self._sessions() as session:
            return self._view(session, network_by_name(session, project_id, name))

    def delete(self, project_id: str, name: str) -> None:
        """Delete a network without NICs; refuse, naming the VMs, while it has some."""
        with self._sessions.begin() as session:
            row = network_by_name(session, project_id, name)
            vms = session.scalars(select(VMRow.name).join(NicRow, NicRow.vm_id == VMRow.id)
                                  .where(NicRow.network_id == row.id).order_by(VMRow.name)).all()
            if vms:
                raise Conflict(f"network '{name}' still has VMs on it: {', '.join(vms)}",
                               hint="delete those VMs first")
            session.delete(row)

    # -- IPAM -----------------------------------------------------------------------------

    def add_nics(self, session: Session, project_id: str, vm_id: str,
                 requests: Sequence[NicRequest], ports: Sequence[PortForward] = ()) -> None:
        """In the VM's own create transaction: a MAC and an address for each NIC asked for.
        ``--port`` forwards become DNAT to the first NIC on a NAT network: refused without one."""
        if len(requests) > MAX_NICS:
            raise InvalidRequest(f"{len(requests)} NICs asked for; at most {MAX_NICS}")
        nat = False
        for position, request in enumerate(requests):
            network = network_by_name(session, project_id, request.network)
            nat = nat or network.nat
            subnet = ipaddress.IPv4Network(network.subnet)
            used = set(session.scalars(select(NicRow.address)
                                       .where(NicRow.network_id == network.id)))
            address = _pick_address(subnet, used, request.ip, network.name)
            session.add(NicRow(id=uuid.uuid4().hex, vm_id=vm_id, network_id=network.id,
                               position=position, mac=_new_mac(session), address=address))
            session.flush()  # the next NIC on the same network sees this address as taken
        if ports and not nat:
            raise InvalidRequest(
                "--port forwards of a VM on --network need one of its networks to be a NAT "
                "network (they become DNAT to its address there)",
                hint="create the network with --nat, or leave out --port")

    def host_input(self, host: str, active_vm_ids: set[str]) -> HostNetworkInput:
        """What ``host`` must have for the VMs of ``active_vm_ids`` (active on any host): the
        networks and taps of those on ``host``, the other hosts of each network as VXLAN peers
        (their agents' addresses), and the ``--port`` forwards of VMs on NAT networks."""
        with self._sessions() as session:
            rows = session.execute(
                select(NicRow, NetworkRow, VMRow.slot)
                .join(NetworkRow, NetworkRow.id == NicRow.network_id)
                .join(VMRow, VMRow.id == NicRow.vm_id)
                .where(VMRow.host == host, NicRow.vm_id.in_(active_vm_ids))
                .order_by(NicRow.vm_id, NicRow.position)).all()
            network_ids = {net.id for _, net, _ in rows}
            elsewhere = session.execute(
                select(NicRow.network_id, HostRow.address, HostRow.vtep)
                .join(VMRow, VMRow.id == NicRow.vm_id).join(HostRow, HostRow.name == VMRow.host)
                .where(NicRow.network_id.in_(network_ids), VMRow.host != host,
                       NicRow.vm_id.in_(active_vm_ids))).all()
            own = session.execute(select(HostRow.address, HostRow.vtep)
                                  .where(HostRow.name == host)).first()
            ports = session.execute(select(PortRow).where(PortRow.vm_id.in_(
                {nic.vm_id for nic, _, _ in rows}))).scalars().all()
        peers: dict[str, set[str]] = {}
        for network_id, address, its_vtep in elsewhere:
            vtep = its_vtep or vtep_of(address)
            if vtep is not None:
                peers.setdefault(network_id, set()).add(vtep)
        networks = {net.vni: HostNetwork(vni=net.vni, subnet=net.subnet, nat=net.nat, mtu=net.mtu,
                                         peers=tuple(sorted(peers.get(net.id, ()))))
                    for _, net, _ in rows}
        nics = tuple(HostNic(nic_id=nic.id, vm_id=nic.vm_id, position=nic.position, vni=net.vni,
                             mac=nic.mac, address=nic.address, slot=slot)
                     for nic, net, slot in rows)
        first_nat: dict[str, tuple[int, str]] = {}
        for nic, net, _ in rows:  # ordered by position: the VM's first NIC on a NAT network
            if net.nat:
                first_nat.setdefault(nic.vm_id, (net.vni, nic.address))
        forwards = tuple(HostForward(vni=first_nat[p.vm_id][0], address=first_nat[p.vm_id][1],
                                     host_port=p.host_port, guest_port=p.guest_port)
                         for p in sorted(ports, key=lambda p: p.host_port) if p.vm_id in first_nat)
        return HostNetworkInput(networks=tuple(networks[v] for v in sorted(networks)), nics=nics,
                                forwards=forwards,
                                underlay=(own.vtep or vtep_of(own.address)) if peers and own else None)

    def hosts_sharing(self, host: str, active_vm_ids: set[str]) -> set[str]:
        """The other hosts with VMs of ``active_vm_ids`` on a network that ``host`` has some on."""
        with self._sessions() as session:
            mine = select(NicRow.network_id).join(VMRow, VMRow.id == NicRow.vm_id).where(
                VMRow.host == host, NicRow.vm_id.in_(active_vm_ids))
            return set(session.scalars(
                select(VMRow.host).join(NicRow, NicRow.vm_id == VMRow.id)
                .where(NicRow.network_id.in_(mine), VMRow.host != host,
                       VMRow.host.is_not(None), NicRow.vm_id.in_(active_vm_ids)).distinct()))

    def _view(self, session: Session, row: NetworkRow) -> NetworkView:
        nics = session.execute(select(NicRow, VMRow.name).join(VMRow, VMRow.id == NicRow.vm_id)
                               .where(NicRow.network_id == row.id).order_by(VMRow.name)).all()
        subnet = ipaddress.IPv4Network(row.subnet)
        return NetworkView(
            name=row.name, project=row.project_id, subnet=row.subnet,
            gateway=str(gateway_of(subnet)), nat=row.nat, vni=row.vni, mtu=row.mtu,
            nics=[NicView(network=row.name, mac=n.mac, address=n.address, vm=vm) for n, vm in nics])


def vtep_of(agent_url: str | None) -> str | None:
    """A host's VXLAN address: the one its agent is reached at (None: no agent over the network,
    e.g. the in-process agent of `virtpool up`, whose host's address is its ``vtep`` if any)."""
    if not agent_url:
        return None
    try:
        return str(ipaddress.ip_address(urlsplit(agent_url).hostname or ""))
    except ValueError:
        return None  # a name, not an address: VXLAN needs an address


def network_by_name(session: Session, project_id: str, name: str) -> NetworkRow:
    """A network of ``project_id``; NotFound (also for another project's) with a hint."""
    row = session.scalar(select(NetworkRow).where(NetworkRow.project_id == project_id,
                                                  NetworkRow.name == name))
    if row is None:
        raise NotFound(f"no network named '{name}'",
                       hint="see `virtpool network list`, or create it with "
                            f"`virtpool network create {name}`")
    return row


def _pick_subnet(asked: str | None, taken: dict[str, ipaddress.IPv4Network]
                 ) -> ipaddress.IPv4Network:
    if asked is not None:
        subnet = ipaddress.IPv4Network(asked)
        for name, other in sorted(taken.items()):
            if subnet.overlaps(other):
                raise Conflict(f"subnet {subnet} overlaps {other} of network '{name}' in this "
                               "project", hint="pick a subnet that overlaps none of them")
        return subnet
    for candidate in DEFAULT_SUBNET_POOL.subnets(new_prefix=24):
        if not any(candidate.overlaps(other) for other in taken.values()):
            return candidate
    raise Conflict(f"no free /24 is left in {DEFAULT_SUBNET_POOL} for this project",
                   hint="give a --subnet of your own")


def _pick_address(subnet: ipaddress.IPv4Network, used: set[str], asked: str | None,
                  network: str) -> str:
    gateway = gateway_of(subnet)
    if asked is not None:
        address = ipaddress.IPv4Address(asked)
        if address not in subnet or address in (subnet.network_address, subnet.broadcast_address):
            raise InvalidRequest(f"address {address} is not a host address of network "
                                 f"'{network}' ({subnet})", hint="pick one inside the subnet")
        if address == gateway:
            raise InvalidRequest(f"address {address} is the gateway of network '{network}'",
                                 hint="pick another address")
        if str(address) in used:
            raise Conflict(f"address {address} is taken on network '{network}'",
                           hint="pick another, or leave ip= out to get a free one")
        return str(address)
    for host in subnet.hosts():
        if host != gateway and str(host) not in used:
            return str(host)
    raise Conflict(f"network '{network}' ({subnet}) has no free address left",
                   hint="delete VMs on it, or use a bigger subnet")


def _new_mac(session: Session) -> str:
    # QEMU's locally administered prefix; the rest random, retried on the (unlikely) clash.
    while True:
        mac = "52:54:00:" + ":".join(f"{b:02x}" for b in secrets.token_bytes(3))
        if session.scalar(select(NicRow.id).where(NicRow.mac == mac)) is None:
            return mac
