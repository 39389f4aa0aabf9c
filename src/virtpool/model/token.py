"""API tokens as the API shows them: never the secret, except once in :class:`TokenCreated`."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from virtpool.model.roles import Role
from virtpool.model.spec import NAME_RULE

MAX_TTL_DAYS = 3650


class TokenCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(description=NAME_RULE, max_length=63)
    role: Role
    project: str | None = Field(
        default=None, max_length=63,
        description="the project it acts in (default: the caller's); null with pool_wide for a pool admin")
    pool_wide: bool = Field(default=False, description="a pool-wide admin token (pool admins only)")
    expires_in_s: int | None = Field(default=None, ge=1, le=MAX_TTL_DAYS * 86400)


class TokenInfo(BaseModel):
    id: str
    name: str
    role: str
    project: str | None  # None: pool-wide
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None


class TokenCreated(TokenInfo):
    token: str = Field(description="the secret; shown this once, stored only hashed")
