"""The pool's inventory as the API shows and changes it: hosts, placement groups, settings, plans.

Pure data (pydantic): the control plane fills these from its rows, the API serves them and the
SDK reads them back.
"""

from __future__ import annotations

from pydantic import BaseModel, Field, field_validator

from virtpool.model.requests import REQUEST
from virtpool.model.resources import (
    DEFAULT_CPU_RATIO,
    DEFAULT_DISK_RATIO,
    DEFAULT_MEMORY_RATIO,
    MAX_RATIO,
    AdminHostState,
    GroupPolicy,
    HostAccel,
    HostState,
    WeigherName,
)
from virtpool.model.names import NAME_RULE, Name


class Usage(BaseModel):
    """One resource of a host: what is allocated, what may be (under the ratio), what is there."""

    allocated: int
    capacity: int
    physical: int = Field(description="total minus the host reservation, before the ratio")


class HostView(BaseModel):
    """A host of the pool with its allocation per resource (vCPUs, MiB, MiB)."""

    name: str
    state: HostState
    accel: HostAccel
    cpus: Usage
    memory_mib: Usage
    disk_mib: Usage
    cpu_ratio: float
    memory_ratio: float
    disk_ratio: float
    balloon: bool
    labels: dict[str, str]
    allowed_projects: list[str] | None = Field(
        default=None, description="the only projects whose VMs it takes (null: every project); "
        "shown to pool admins only, as it names other projects")
    open_to_project: bool | None = Field(
        default=None, description="for a project token: whether the host takes its project's "
        "VMs (null for a pool admin, who sees allowed_projects)")
    vms: int = Field(description="VMs placed on it; for a project token, its own project's only")
    generation: int
    local: bool = Field(description="the host this server's own agent runs on")
    address: str | None = Field(default=None, description="where its agent listens (null: "
                                "the agent in this server's process, or none yet)")
    agent_version: str | None = Field(default=None, description="the virtpool version of its agent")
    lease_epoch: int | None = Field(default=None, description="bumped each time an agent takes "
                                    "the host's lease (null: no agent ever did)")
    lease_age_s: float | None = Field(default=None, description="seconds since its agent last "
                                      "renewed its lease (null: no lease)")


class HostAdd(BaseModel):
    """An inventory row for a host that is not the local one (its agent comes later)."""

    model_config = REQUEST

    name: str = Field(min_length=1, max_length=255, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    cpus: int = Field(ge=1, le=1 << 16)
    memory_mib: int = Field(ge=1, le=1 << 40)
    disk_mib: int = Field(ge=0, le=1 << 50)
    reserved_cpus: int = Field(default=0, ge=0)
    reserved_memory_mib: int = Field(default=0, ge=0)
    reserved_disk_mib: int = Field(default=0, ge=0)
    cpu_ratio: float = Field(default=DEFAULT_CPU_RATIO, gt=0, le=MAX_RATIO)
    memory_ratio: float = Field(default=DEFAULT_MEMORY_RATIO, gt=0, le=MAX_RATIO)
    disk_ratio: float = Field(default=DEFAULT_DISK_RATIO, gt=0, le=MAX_RATIO)
    balloon: bool = False
    labels: dict[str, str] = Field(default_factory=dict)
    state: AdminHostState = "up"
    accel: HostAccel = "kvm"
    allowed_projects: list[str] | None = None


class RatiosUpdate(BaseModel):
    """New allocation ratios; those left out stay as they are."""

    model_config = REQUEST

    cpu: float | None = Field(default=None, gt=0, le=MAX_RATIO)
    memory: float | None = Field(default=None, gt=0, le=MAX_RATIO)
    disk: float | None = Field(default=None, gt=0, le=MAX_RATIO)


class LabelsUpdate(BaseModel):
    """Labels to set (key → value) and keys to remove."""

    model_config = REQUEST

    set: dict[str, str] = Field(default_factory=dict)
    remove: list[str] = Field(default_factory=list)

    @field_validator("set")
    @classmethod
    def _check_keys(cls, value: dict[str, str]) -> dict[str, str]:
        for key in value:
            if not key or "=" in key:
                raise ValueError(f"label key {key!r} must be non-empty and without '='")
        return value


class StateUpdate(BaseModel):
    model_config = REQUEST

    state: AdminHostState


class GroupSpec(BaseModel):
    """A placement group to create."""

    model_config = REQUEST

    name: Name = Field(description=NAME_RULE)
    policy: GroupPolicy
    hard: bool = Field(default=True, description="False: a preference, not a rule (--soft)")


class GroupView(BaseModel):
    name: str
    policy: GroupPolicy
    hard: bool
    project: str
    members: dict[str, str] = Field(description="VM name → the host it is placed on")


class PoolSettings(BaseModel):
    """Pool-wide choices; ``weigher`` ranks hosts when a VM create names none."""

    model_config = REQUEST

    weigher: WeigherName = "spread"
    warm_copies: int = Field(default=0, ge=0, le=16, description=(
        "disks each host keeps ready per memory snapshot that VMs are created from "
        "(vm create --from-snapshot): a create takes one instead of copying, and the host makes "
        "the next in the background (0: copy at each create)"))
    warm_vms: int = Field(default=0, ge=0, le=16, description=(
        "VMs of the default image and shape the pool keeps booted and paused (project _warm, "
        "outside every quota): `vm create NAME --start` of that shape takes one, which runs "
        "with its own name in a fraction of a boot, and the pool boots the next (0: none)"))


class MoveView(BaseModel):
    vm: str
    source: str
    target: str


class RebalanceView(BaseModel):
    """A rebalancing plan, and whether it was applied."""

    mode: str
    moves: list[MoveView]
    spread_before_pp: float
    spread_after_pp: float
    threshold_pp: float
    hosts_freed: list[str]
    stopped: str
    utilization_after_pct: dict[str, float]
    applied: bool = False
