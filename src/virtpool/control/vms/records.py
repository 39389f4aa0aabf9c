"""A VM's row as model objects: what the API shows, what the agent boots, what it holds."""

from __future__ import annotations

from virtpool.control import quotas
from virtpool.control.store.tables import VMRow
from virtpool.model.cloudinit import CloudInit
from virtpool.model.network import NicRequest, NicView
from virtpool.model.project import Usage
from virtpool.model.resources import Resources
from virtpool.model.spec import PortForward, VMSpec
from virtpool.model.states import VMState
from virtpool.model.vm import VMInfo


def held(row: VMRow) -> Resources:
    """What a VM's row claims on its host: vCPUs, the memory it boots with, its disk."""
    return Resources(row.cpus, row.max_memory_mib, row.disk_mib)


def info(row: VMRow) -> VMInfo:
    return VMInfo(
        id=row.id, name=row.name, project=row.project_id, image=row.image, cpus=row.cpus, memory_mib=row.memory_mib,
        disk_mib=row.disk_mib,
        ports=[PortForward(host=p.host_port, guest=p.guest_port) for p in row.ports],
        kernel_args=row.kernel_args, accel=row.accel, max_memory_mib=row.max_memory_mib,
        cpu_cap_pct=row.cpu_cap_pct, cpu_weight=row.cpu_weight, disk_iops=row.disk_iops,
        disk_bps=row.disk_bps, cpu_affinity=row.cpu_affinity, state=VMState(row.state), error=row.error,
        nics=[NicView(network=n.network.name, mac=n.mac, address=n.address) for n in row.nics],
        host=row.host, pinned=row.pinned_host is not None, created_at=row.created_at, updated_at=row.updated_at,
        started_at=row.started_at,
        address=row.nics[0].address if row.nics else (
            f"127.0.0.1:{row.ports[0].host_port}" if row.ports else None),
        boot_timeout_s=row.boot_timeout_s, stopped_by=row.stopped_by,  # type: ignore[arg-type]
        cloud_init=CloudInit.model_validate(row.cloud_init) if row.cloud_init else None,
    )


def usage_after(vm: VMInfo, columns: dict[str, object]) -> Usage:
    """What ``vm`` counts against its quota once ``columns`` are written."""
    merged = {k: columns.get(k, getattr(vm, k)) for k in ("cpus", "max_memory_mib", "disk_mib")}
    return quotas.vm_usage(**merged)  # type: ignore[arg-type]


def spec(vm: VMInfo) -> VMSpec:
    """The spec the VM's host boots it from."""
    return VMSpec(
        name=vm.name, image=vm.image, cpus=vm.cpus, memory_mib=vm.memory_mib,
        disk_mib=vm.disk_mib, ports=vm.ports, kernel_args=vm.kernel_args, accel=vm.accel,
        max_memory_mib=vm.max_memory_mib, cpu_cap_pct=vm.cpu_cap_pct, cpu_weight=vm.cpu_weight,
        disk_iops=vm.disk_iops, disk_bps=vm.disk_bps, cpu_affinity=vm.cpu_affinity,
        networks=[NicRequest(network=n.network, ip=n.address) for n in vm.nics],
        boot_timeout_s=vm.boot_timeout_s, cloud_init=vm.cloud_init,
    )
