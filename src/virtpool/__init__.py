"""virtpool: pool the CPU, memory and disk of Linux hosts into QEMU virtual machines."""

__version__ = "0.1.0"

__all__ = ["APIError", "Client", "__version__"]


def __getattr__(name: str) -> object:
    # Lazy: every layer imports `virtpool.…`; only SDK users should load the SDK and httpx.
    if name in ("APIError", "Client"):
        from virtpool.sdk import client

        return getattr(client, name)
    raise AttributeError(f"module 'virtpool' has no attribute {name!r}")
