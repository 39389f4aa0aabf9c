"""A VM as the pool records it and the API shows it."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

from virtpool.model.cloudinit import CloudInit
from virtpool.model.network import NicView
from virtpool.model.spec import PortForward
from virtpool.model.states import VMState


# How a VM's last stop ended: its guest agent shut it down, the guest heeded the ACPI power
# button, it was killed (neither worked in time), it was stopped hard as asked (--force), or
# the guest powered off by itself.
StopMethod = Literal["guest-agent", "acpi", "killed", "forced", "guest"]
STOPPED_BY: dict[str, str] = {
    "guest-agent": "shut down through its guest agent",
    "acpi": "shut down after the ACPI power button",
    "killed": "killed: the guest did not shut down in time",
    "forced": "stopped hard, as asked (--force)",
    "guest": "the guest powered off",
}


class VMInfo(BaseModel):
    id: str
    name: str
    project: str = "default"
    image: str
    cpus: int
    memory_mib: int
    disk_mib: int
    ports: list[PortForward]
    kernel_args: str
    accel: str
    max_memory_mib: int
    cpu_cap_pct: int | None
    cpu_weight: int
    disk_iops: int | None
    disk_bps: int | None
    cpu_affinity: list[int] | None = None
    nics: list[NicView] = []
    state: VMState
    error: str | None
    host: str
    pinned: bool = Field(default=False, description="created with --host: it stays on its host")
    boot_timeout_s: float | None = None  # what its boots wait for (None: the server's default)
    stopped_by: StopMethod | None = None  # how its last stop ended
    cloud_init: CloudInit | None = None  # its seed's user part (the instance-id is its id)
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None = Field(default=None, description="when it last began running "
                                        "(kept across a pause); null while it is not running")
    address: str | None = Field(default=None, description="where to reach it: its first NIC's IP "
                                "address, or 127.0.0.1:PORT of its first port forward")


class ResizeResult(BaseModel):
    """The VM after a resize, and what the user should know (e.g. "takes effect at boot")."""

    vm: VMInfo
    notes: list[str] = []


class VMUsage(BaseModel):
    """What a VM's QEMU uses right now, as its host measures it. ``None`` where it cannot tell."""

    cpu_percent: float | None = None  # of one host CPU, over the last sampling interval
    cpu_time_s: float | None = None
    balloon_mib: float | None = None  # what the guest has after the balloon
    guest_total_mib: float | None = None
    guest_free_mib: float | None = None
    qemu_rss_mib: float | None = None
    disk_read_bytes: int | None = None
    disk_written_bytes: int | None = None
    disk_read_ops: int | None = None
    disk_write_ops: int | None = None
    # As the guest sees them: a tap's host counters, or the default network's guest agent's.
    net_rx_bytes: int | None = None
    net_tx_bytes: int | None = None
    net_rx_packets: int | None = None
    net_tx_packets: int | None = None


class VMStats(VMUsage):
    """A VM's usage as the API shows it: its host's figures with the pool's record."""

    name: str
    state: str
    memory_boot_mib: int
