"""An audit entry as the API shows it."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel


class AuditEntry(BaseModel):
    id: int
    time: datetime
    actor: str  # a token's name, or an automatic actor such as "memory-balancer"
    project: str | None = None  # None: a pool-wide action
    action: str  # e.g. "POST /vms/{name}/start", "memory.balloon"
    target: str | None
    outcome: str  # an HTTP status with its title, or "done"
