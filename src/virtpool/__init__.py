"""virtpool: pool the CPU, memory and disk of Linux hosts into QEMU virtual machines."""

__version__ = "0.1.0"

from virtpool.sdk.client import APIError, Client

__all__ = ["APIError", "Client", "__version__"]
