"""Projects (tenants), their quotas and what their VMs use, as the API shows them."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field, field_validator

from virtpool.model.requests import REQUEST
from virtpool.model.spec import NAME_RULE, valid_name

# Limits the database columns hold: MiB quotas are 64-bit columns (capped well below that, at a
# petabyte and more), the CPU and VM counts 32-bit ones.
MAX_QUOTA = 1 << 40
MAX_COUNT_QUOTA = (1 << 31) - 1
# A project's name is its id, which the schema keeps in 32 characters (projects.id and every
# project_id column).
MAX_PROJECT_NAME = 32
PROJECT_NAME_RULE = NAME_RULE.replace("1-63 characters", f"1-{MAX_PROJECT_NAME} characters")


def project_name_problem(name: str) -> str | None:
    """Why ``name`` cannot name a project, or None when it can."""
    if len(name) > MAX_PROJECT_NAME:
        return f"a project name is at most {MAX_PROJECT_NAME} characters; '{name}' has {len(name)}"
    if not valid_name(name):
        return f"'{name}' is not a valid project name: {PROJECT_NAME_RULE}"
    return None


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

    model_config = REQUEST

    cpus: int | None = Field(default=None, ge=0, le=MAX_COUNT_QUOTA)
    memory_mib: int | None = Field(default=None, ge=0, le=MAX_QUOTA)
    disk_mib: int | None = Field(default=None, ge=0, le=MAX_QUOTA)
    vms: int | None = Field(default=None, ge=0, le=MAX_COUNT_QUOTA)


class ProjectCreate(BaseModel):
    model_config = REQUEST

    name: str = Field(description=PROJECT_NAME_RULE)
    quota: Quota = Field(default_factory=Quota)

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        problem = project_name_problem(value)
        if problem:
            raise ValueError(problem)
        return value


class ProjectInfo(BaseModel):
    name: str
    quota: Quota
    usage: Usage
    created_at: datetime


class QuotaResult(BaseModel):
    """The project after a quota change, and what the user should know about it."""

    project: ProjectInfo
    notes: list[str] = []
