"""The SDK's exceptions: one class per kind of refusal, each carrying the API's problem+json.

Catch :class:`APIError` for any refusal, or a subclass for one kind::

    try:
        client.vm("web")
    except NotFound:
        ...
"""

from __future__ import annotations

from typing import Any


class APIError(Exception):
    """The API refused a call (or could not be reached: status 0); carries its problem+json."""

    def __init__(self, status: int, title: str, detail: str, hint: str | None = None,
                 body: dict[str, Any] | None = None) -> None:
        super().__init__(f"{detail} ({hint})" if hint else detail)
        self.status = status
        self.title = title
        self.detail = detail
        self.hint = hint
        self.body = body or {}

    @property
    def error(self) -> str | None:
        """The server's name for the error (e.g. "StateError", "QuotaExceeded"), when it gave one."""
        return self.body.get("error")


class Unreachable(APIError):
    """No answer from the server (status 0)."""


class UntrustedServer(Unreachable):
    """The server's certificate is not the one trusted (another CA, or not the pinned one):
    nothing was sent to it (status 0)."""


class InsecureURL(APIError):
    """A plain http:// URL beyond loopback: the token would cross a network in clear text, so
    the client sends nothing (status 0)."""


class BadRequest(APIError):
    """400: the request could not be read."""


class Unauthorized(APIError):
    """401: no token, or one that is unknown, expired or revoked."""


class Forbidden(APIError):
    """403: the token's role does not allow this."""


class NotFound(APIError):
    """404: no such resource (or not visible to this token)."""


class Conflict(APIError):
    """409: the request clashes with the pool's state (name taken, wrong VM state, …)."""


class QuotaExceeded(Conflict):
    """The project's quota does not leave room for this."""


class PayloadTooLarge(APIError):
    """413: the request body is over the endpoint's limit."""


class InvalidRequest(APIError):
    """422: the request is well formed but its values are not acceptable."""


class RateLimited(APIError):
    """429: too many failed authentications from this address; ``retry_after`` says when to
    try again (seconds)."""

    @property
    def retry_after(self) -> int | None:
        value = self.body.get("retry_after")
        return value if isinstance(value, int) else None


class ServerError(APIError):
    """5xx: the server failed, or cannot do this now (e.g. no agent attached)."""


class OperationFailed(APIError):
    """A followed operation ended in failure; ``operation`` is its final record."""

    def __init__(self, operation: Any) -> None:
        super().__init__(0, "operation failed", operation.error or "failed", body={})
        self.operation = operation


BY_STATUS: dict[int, type[APIError]] = {
    0: Unreachable, 400: BadRequest, 401: Unauthorized, 403: Forbidden, 404: NotFound,
    409: Conflict, 413: PayloadTooLarge, 422: InvalidRequest, 429: RateLimited,
}
BY_NAME: dict[str, type[APIError]] = {"QuotaExceeded": QuotaExceeded}


def error_class(status: int, body: dict[str, Any]) -> type[APIError]:
    """The most specific exception class for an answer's status and problem body."""
    name = body.get("error")
    if isinstance(name, str) and name in BY_NAME:
        return BY_NAME[name]
    if "quota" in str(body.get("type", "")).lower():
        return QuotaExceeded
    if status >= 500:
        return ServerError
    return BY_STATUS.get(status, APIError)


def raise_for_problem(response: Any) -> None:
    """Raise the exception class that fits an error answer's status and problem+json
    (``response``: the SDK transport's or httpx's)."""
    if not response.is_error:
        return
    try:
        response.read()
        body = response.json()
    except ValueError:
        body = {"detail": response.text or response.reason_phrase}
    if not isinstance(body, dict):
        body = {"detail": str(body)}
    raise error_class(response.status_code, body)(
        response.status_code, body.get("title", "error"), str(body.get("detail", "")), body.get("hint"), body)
