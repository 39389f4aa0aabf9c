"""The Python SDK."""

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
