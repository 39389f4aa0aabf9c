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
        InsecureURL,
        InvalidRequest,
        NotFound,
        OperationFailed,
        PayloadTooLarge,
        QuotaExceeded,
        RateLimited,
        ServerError,
        Unauthorized,
        Unreachable,
        UntrustedServer,
    )
    from virtpool.sdk.tls import Trust

__all__ = ["APIError", "BadRequest", "Client", "Conflict", "Forbidden", "InsecureURL", "InvalidRequest",
           "NotFound", "OperationFailed", "PayloadTooLarge", "QuotaExceeded", "RateLimited", "ServerError",
           "Trust", "Unauthorized", "Unreachable", "UntrustedServer", "VMPage"]


def __getattr__(name: str) -> Any:
    if name in ("Client", "VMPage"):
        from virtpool.sdk import client

        return getattr(client, name)
    if name == "Trust":
        from virtpool.sdk import tls

        return tls.Trust
    if name in __all__:
        from virtpool.sdk import errors

        return getattr(errors, name)
    raise AttributeError(f"module 'virtpool.sdk' has no attribute {name!r}")
