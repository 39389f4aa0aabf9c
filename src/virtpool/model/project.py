"""Projects (tenants), their quotas and what their VMs use, as the API shows them."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from virtpool.model.spec import NAME_RULE

MAX_QUOTA = 1 << 40


class Usage(BaseModel):
    """Resources counted against a project's quota (memory as the VM's boot ceiling)."""

    model_config = ConfigDict(frozen=True)

    cpus: int = 0
    memory_mib: int = 0
    disk_mib: int = 0
    vms: int = 0

    def minus(self, other: Usage) -> Usage:
        return Usage(cpus=self.cpus - other.cpus, memory_mib=self.memory_mib - other.memory_mib,
                     disk_mib=self.disk_mib - other.disk_mib, vms=self.vms - other.vms)

    def is_zero(self) -> bool:
        return self == Usage()


class Quota(BaseModel):
    """Limits of a project; ``None`` is unlimited."""

    model_config = ConfigDict(extra="forbid")

    cpus: int | None = Field(default=None, ge=0, le=MAX_QUOTA)
    memory_mib: int | None = Field(default=None, ge=0, le=MAX_QUOTA)
    disk_mib: int | None = Field(default=None, ge=0, le=MAX_QUOTA)
    vms: int | None = Field(default=None, ge=0, le=MAX_QUOTA)


class ProjectCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(description=NAME_RULE, max_length=63)
    quota: Quota = Field(default_factory=Quota)


class ProjectInfo(BaseModel):
    name: str
    quota: Quota
    usage: Usage
    created_at: datetime


class QuotaResult(BaseModel):
    """The project after a quota change, and what the user should know about it."""

    project: ProjectInfo
    notes: list[str] = []
