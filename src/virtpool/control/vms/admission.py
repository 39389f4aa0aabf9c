"""What a VM's create or start is checked against besides capacity: its host ports.

Capacity (vCPUs, memory, disk, the host's size) is not checked here: the scheduler's filters
and the claim on the host row are the one place for it (control/placement.py).
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from virtpool.control.store.tables import PortRow, VMRow
from virtpool.model.agent import Agent
from virtpool.model.errors import Conflict, InvalidRequest
from virtpool.model.spec import HostInfo, PortForward


def check_ports_recorded(sessions: sessionmaker[Session], ports: Iterable[PortForward], *,
                         vm_id: str | None, project_id: str) -> None:
    """No other VM's record forwards one of ``ports``; raises Conflict."""
    ports = list(ports)
    if not ports:
        return
    with sessions() as session:
        taken = session.execute(
            select(PortRow.host_port, VMRow.name, VMRow.project_id)
            .join(VMRow)
            .where(PortRow.host_port.in_([p.host for p in ports]))
            .where(VMRow.id != (vm_id or ""))
        ).all()
    if taken:
        port, owner, owner_project = taken[0]
        # Another project's VM is not named: its name is that tenant's business.
        whose = f"VM '{owner}'" if owner_project == project_id else "a VM of another project"
        raise Conflict(f"host port {port} is already forwarded to {whose}", hint="pick another port")


def check_ports_free(agent: Agent, ports: Iterable[PortForward]) -> None:
    """Every one of ``ports`` can be bound on the VM's host (InvalidRequest: never, below the
    host's unprivileged port start) and no other program holds one (Conflict)."""
    ports = list(ports)
    if not ports:
        return
    check_ports_bindable(agent.host_info(), ports)
    for forward in ports:
        if not agent.check_port_free(forward.host):
            raise Conflict(
                f"host port {forward.host} is in use by another program on this host",
                hint="pick another port",
            )


def check_ports_bindable(host: HostInfo, ports: Iterable[PortForward]) -> None:
    """No port of ``ports`` lies below the lowest one an unprivileged process may bind on
    ``host``: the VM's network runs unprivileged, so such a VM could never start there."""
    low = sorted(p.host for p in ports if p.host < host.unprivileged_port_start)
    if low:
        listed = ", ".join(str(p) for p in low)
        raise InvalidRequest(
            f"host port{'s' if len(low) > 1 else ''} {listed} below {host.unprivileged_port_start} "
            f"cannot be forwarded on host '{host.hostname}': its VMs' networks run unprivileged, and "
            f"net.ipv4.ip_unprivileged_port_start is {host.unprivileged_port_start} there",
            hint=f"pick host ports from {host.unprivileged_port_start} up (e.g. 8080:80)")
