"""What a user asks for: the VM spec, and the host facts it is checked against.

Pure data and static rules only. Checks that need the host (is the image there, is the port
free, does the host have that much memory) happen in the control plane.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from virtpool.model.cloudinit import CloudInit
from virtpool.model.names import NAME_PATTERN, NAME_RULE, Name, SecGroupName, valid_name
from virtpool.model.network import NicRequest
from virtpool.model.requests import FROZEN_REQUEST, REQUEST
from virtpool.model.secgroup import MAX_GROUPS_PER_VM, each_once

__all__ = ["NAME_PATTERN", "NAME_RULE", "valid_name"]  # where the rest of virtpool finds them


MIN_MEMORY_MIB = 64  # the Debian cloud kernel with our initramfs does not boot in less
MAX_CPUS = 255  # microvm's limit for x86 without an IOMMU (x2APIC IDs beyond need one)
MAX_KERNEL_ARGS = 2048  # the x86 boot protocol's command line limit
DEFAULT_CPU_WEIGHT = 100
MAX_BOOT_TIMEOUT_S = 3600.0  # an hour: beyond that a guest is not booting, it is stuck

Accel = Literal["auto", "kvm", "tcg"]
KERNEL_ARGS_RULE = "kernel arguments must be printable text on one line"


def kernel_args_ok(value: str) -> bool:
    """Whether ``value`` may go on a kernel command line: a VM's or an image's (both end up in
    QEMU's -append, where a newline or another control character splits or ends it)."""
    return not any(ord(c) < 0x20 or ord(c) == 0x7F for c in value)


class PortForward(BaseModel):
    """A TCP port of the host forwarded to a port in the guest: on the host's loopback for the
    default network, on every host address (nftables DNAT) for a VM on a NAT network."""

    model_config = FROZEN_REQUEST

    host: int = Field(ge=1, le=65535)
    guest: int = Field(ge=1, le=65535)

    @classmethod
    def parse(cls, text: str) -> PortForward:
        """'8080:80' → host 8080, guest 80."""
        host, sep, guest = text.partition(":")
        if not sep or not host.isdigit() or not guest.isdigit():
            from virtpool.model.errors import InvalidRequest

            raise InvalidRequest(
                f"cannot read port forward '{text}'", hint="write HOST:GUEST, e.g. 8080:80"
            )
        return cls(host=int(host), guest=int(guest))

    def __str__(self) -> str:
        return f"{self.host}:{self.guest}"


class VMSpec(BaseModel):
    """A VM as the user describes it."""

    model_config = REQUEST

    name: Name = Field(description=NAME_RULE, examples=["web1"])
    image: Name = Field(default="default", description="name of an image (`virtpool image list`)")
    cpus: int = Field(default=1, ge=1, le=MAX_CPUS)
    memory_mib: int = Field(default=256, ge=MIN_MEMORY_MIB, le=16 * 1024 * 1024)
    disk_mib: int = Field(default=1024, ge=1, le=64 * 1024 * 1024)
    ports: list[PortForward] = Field(default_factory=list, max_length=64)
    kernel_args: str = Field(default="", max_length=MAX_KERNEL_ARGS)
    accel: Accel = "auto"
    max_memory_mib: int | None = Field(
        default=None, ge=MIN_MEMORY_MIB, le=16 * 1024 * 1024,
        description="memory the VM boots with; the balloon gives it `memory_mib` of that "
        "and can grow it up to here while it runs (default: memory_mib)",
    )
    cpu_cap_pct: int | None = Field(
        default=None, ge=1, le=100 * MAX_CPUS, description="cap on host CPU time, % of one CPU"
    )
    cpu_weight: int = Field(default=DEFAULT_CPU_WEIGHT, ge=1, le=10000,
                            description="share of CPU under contention (100 = normal)")
    disk_iops: int | None = Field(default=None, ge=1, le=10_000_000)
    disk_bps: int | None = Field(default=None, ge=4096, le=1 << 40)
    cpu_affinity: list[Annotated[int, Field(ge=0, le=4095)]] | None = Field(
        default=None, max_length=4096, description="host CPUs the VM may run on (default: any)")
    boot_timeout_s: float | None = Field(
        default=None, ge=1, le=MAX_BOOT_TIMEOUT_S,
        description="seconds the guest may take to answer its agent (default: the image's, "
        "else the server's)")
    # Where it may run (see control/placement.py); none of these reach QEMU.
    group: str | None = Field(default=None, description="placement group (`virtpool group list`)")
    host: str | None = Field(default=None, min_length=1, max_length=255,
                             description="pin to this host (`virtpool host list`); refused with "
                                         "the scheduler's reason when it does not fit there")
    required_labels: dict[Annotated[str, Field(min_length=1, max_length=63)],
                          Annotated[str, Field(max_length=255)]] = Field(
        default_factory=dict, max_length=32, description="only hosts with every key=value label")
    weigher: Literal["spread", "pack", "balanced"] | None = Field(
        default=None, description="how to rank hosts for this VM (default: the pool's)")
    networks: list[NicRequest] = Field(
        default_factory=list, max_length=8,
        description="a NIC on each of these networks of the project (default: one NIC on the "
                    "host's user-mode network, which --port forwards to)")
    secgroups: list[SecGroupName] = Field(
        default_factory=list, max_length=MAX_GROUPS_PER_VM,
        description="security groups of the project filtering its NICs (default: none, the "
                    "network's default: ingress from the same network only)")
    cloud_init: CloudInit | None = Field(
        default=None, description="a NoCloud seed (user-data, SSH keys, hostname, network "
        "config) for images with cloud-init; such an image gets one with its defaults anyway")

    @field_validator("secgroups")
    @classmethod
    def _check_secgroups(cls, value: list[str]) -> list[str]:
        return each_once(value)

    @model_validator(mode="after")
    def _check_secgroups_need_networks(self) -> VMSpec:
        if self.secgroups and not self.networks:
            raise ValueError("security groups filter NICs on virtual networks; give a --network "
                             "too, or leave the security groups out")
        return self

    @field_validator("kernel_args")
    @classmethod
    def _check_kernel_args(cls, value: str) -> str:
        if not kernel_args_ok(value):
            raise ValueError(KERNEL_ARGS_RULE)
        return value

    @property
    def boot_memory_mib(self) -> int:
        return self.max_memory_mib or self.memory_mib

    @field_validator("cpu_affinity")
    @classmethod
    def _normalise_affinity(cls, value: list[int] | None) -> list[int] | None:
        if not value:
            return None  # [] means what leaving it out means: any CPU
        return sorted(set(value))

    @model_validator(mode="after")
    def _check_memory(self) -> VMSpec:
        if self.max_memory_mib is not None and self.max_memory_mib < self.memory_mib:
            raise ValueError(
                f"max_memory_mib ({self.max_memory_mib}) is below memory_mib ({self.memory_mib})"
            )
        return self

    @model_validator(mode="after")
    def _check_ports(self) -> VMSpec:
        seen: set[int] = set()
        for forward in self.ports:
            if forward.host in seen:
                raise ValueError(f"host port {forward.host} is forwarded twice")
            seen.add(forward.host)
        return self


class HostInfo(BaseModel):
    """A host's inventory as its agent reports it."""

    hostname: str
    cpus: int
    memory_mib: int
    disk_total_mib: int
    disk_free_mib: int
    accel: Literal["kvm", "tcg"]
    accel_reason: str
    qemu_version: str
    data_dir: str
    # net.ipv4.ip_unprivileged_port_start in the agent's network namespace: the lowest host
    # port a VM's network (passt, run as the VM's unprivileged user) can forward. An agent
    # older than this field is taken to have Linux's default.
    unprivileged_port_start: int = Field(default=1024, ge=0, le=65536)


class Resize(BaseModel):
    """Changes to a VM's resources; fields left out stay as they are.

    ``cpu_cap_pct``, ``disk_iops`` and ``disk_bps`` take 0 to mean "no limit".
    """

    model_config = REQUEST

    memory_mib: int | None = Field(default=None, ge=MIN_MEMORY_MIB, le=16 * 1024 * 1024)
    max_memory_mib: int | None = Field(default=None, ge=MIN_MEMORY_MIB, le=16 * 1024 * 1024)
    cpus: int | None = Field(default=None, ge=1, le=MAX_CPUS)
    cpu_cap_pct: int | None = Field(default=None, ge=0, le=100 * MAX_CPUS)
    cpu_weight: int | None = Field(default=None, ge=1, le=10000)
    disk_iops: int | None = Field(default=None, ge=0, le=10_000_000)
    disk_bps: int | None = Field(default=None, ge=0, le=1 << 40)
    disk_mib: int | None = Field(default=None, ge=1, le=64 * 1024 * 1024)
    cpu_affinity: list[Annotated[int, Field(ge=0, le=4095)]] | None = Field(
        default=None, max_length=4096, description="host CPUs to run on; [] = any")

    def is_empty(self) -> bool:
        return not self.model_fields_set


class LiveChanges(BaseModel):
    """What the agent must change in a running VM (None: leave as is; 0 limit: remove it)."""

    balloon_mib: int | None = None
    cpu_cap_pct: int | None = None
    cpu_weight: int | None = None
    throttle: tuple[int, int] | None = None  # (iops, bps), 0 = unlimited
    cpu_affinity: list[int] | None = None  # [] = any
    disk_mib: int | None = None


class ExecOutput(BaseModel):
    """Output of a command in the guest as it runs (``vm exec`` streams these, then the result)."""

    stream: Literal["stdout", "stderr"]
    data: bytes


class ExecResult(BaseModel):
    """The outcome of a command run in the guest."""

    exit_code: int
    stdout: str
    stderr: str
    truncated: bool = False
