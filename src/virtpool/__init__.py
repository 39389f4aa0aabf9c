"""virtpool: pool the CPU, memory and disk of Linux hosts into QEMU virtual machines."""

__version__ = "0.1.0"

__all__ = ["APIError", "BadRequest", "Client", "Conflict", "Forbidden", "InvalidRequest", "NotFound",
           "OperationFailed", "PayloadTooLarge", "QuotaExceeded", "RateLimited", "ServerError", "Unauthorized",
           "Unreachable", "VMPage", "__version__"]


def __getattr__(name: str) -> object:
    # Lazy: every layer imports `virtpool.…`; only SDK users should load the SDK and httpx.
    if name in __all__ and name != "__version__":
        from virtpool import sdk

        return getattr(sdk, name)
    raise AttributeError(f"module 'virtpool' has no attribute {name!r}")
