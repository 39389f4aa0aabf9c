"""An event as the API shows it."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel


class Event(BaseModel):
    id: int
    time: datetime
    kind: str  # "vm.state", "memory.balloon", …
    actor: str  # who did it: a token's name, or "memory-balancer" and the like
    vm: str | None
    project: str | None = None
    message: str
    data: dict[str, Any] | None = None
