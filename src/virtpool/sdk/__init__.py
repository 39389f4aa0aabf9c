"""The Python SDK."""

from virtpool.sdk.client import APIError, Client

__all__ = ["APIError", "Client"]
