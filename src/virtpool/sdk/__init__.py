"""The Python SDK (imported lazily: `from virtpool.sdk.transport import …` loads no models)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from virtpool.sdk.client import Client, VMPage
    from virtpool.sdk.errors import (
        APIError,
        BadRequest,
        Conflict,
        Forbidden,
        InvalidRequest,
        NotFound,
        OperationFailed,
        PayloadTooLarge,
        QuotaExceeded,
        RateLimited,
        ServerError,
        Unauthorized,
        Unreachable,
    )

__all__ = ["APIError", "BadRequest", "Client", "Conflict", "Forbidden", "InvalidRequest", "NotFound",
           "OperationFailed", "PayloadTooLarge", "QuotaExceeded", "RateLimited", "ServerError", "Unauthorized",
           "Unreachable", "VMPage"]


def __getattr__(name: str) -> Any:
    if name in ("Client", "VMPage"):
        from virtpool.sdk import client

        return getattr(client, name)
    if name in __all__:
        from virtpool.sdk import errors

        return getattr(errors, name)
    raise AttributeError(f"module 'virtpool.sdk' has no attribute {name!r}")
