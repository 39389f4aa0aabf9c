"""A VM's row as model objects: what the API shows, what the agent boots, what it holds."""

from __future__ import annotations

from virtpool.control import quotas
from virtpool.control.store.tables import VMRow
from virtpool.control.vms.reads import COLUMNS, info_of
from virtpool.model.network import NicRequest
from virtpool.model.project import Usage
from virtpool.model.resources import Resources
from virtpool.model.spec import VMSpec
from virtpool.model.vm import VMInfo


def held(row: VMRow) -> Resources:
    """What a VM's row claims on its host: vCPUs, the memory it boots with, its disk."""
    return Resources(row.cpus, row.max_memory_mib, row.disk_mib)


def info(row: VMRow) -> VMInfo:
    """A mapped VM row (its relationships loaded) as the API shows it."""
    return info_of([getattr(row, name) for name in COLUMNS],
                   [{"host": p.host_port, "guest": p.guest_port} for p in row.ports],
                   [{"network": n.network.name, "mac": n.mac, "address": n.address} for n in row.nics],
                   [g.name for g in row.secgroups])


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
        secgroups=vm.secgroups,
        boot_timeout_s=vm.boot_timeout_s, cloud_init=vm.cloud_init,
    )
