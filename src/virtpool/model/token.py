"""API tokens as the API shows them: never the secret, except once in :class:`TokenCreated`."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field, model_validator

from virtpool.model.requests import REQUEST
from virtpool.model.roles import Role
from virtpool.model.spec import NAME_RULE

MAX_TTL_DAYS = 3650


class TokenCreate(BaseModel):
    model_config = REQUEST

    name: str = Field(description=NAME_RULE, max_length=63)
    role: Role = Field(strict=False)  # an enum: its value as a string
    project: str | None = Field(
        default=None, max_length=63,
        description="the project it acts in (default: the caller's); null with pool_wide for a pool admin")
    pool_wide: bool = Field(default=False, description="a pool-wide admin token (pool admins only)")
    expires_in_s: int | None = Field(default=None, ge=1, le=MAX_TTL_DAYS * 86400)

    @model_validator(mode="after")
    def _check_scope(self) -> TokenCreate:
        # A pool-wide token acts in no project: taking one as well would silently drop it.
        if self.pool_wide and self.project is not None:
            raise ValueError(f"a pool-wide token acts in no project, so it cannot also have project "
                             f"'{self.project}': leave out project, or pool_wide for a project token")
        return self


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
