"""The root of every error virtpool raises on purpose.

Tree (each class lives with the layer that raises it, but derives from one of these roots so
that the API can map it to an HTTP status without knowing the layer)::

    VirtpoolError                 anything virtpool refuses or fails to do; has .hint
    ├── InvalidRequest            the request itself is wrong (bad name, size out of range) → 422
    ├── NotFound                  no such VM, image, token → 404
    ├── Conflict                  the request clashes with current state (duplicate name,
    │   │                         host port taken, wrong VM state) → 409
    │   └── StateError            the VM is not in a state that allows the action
    ├── InsufficientResources     the host cannot hold what was asked → 409
    │   └── InsufficientStorage   the host's data disk is full (ENOSPC) → 507
    ├── Unauthorized              no or bad credentials → 401
    ├── Forbidden                 a role that does not allow the action → 403
    ├── RateLimited               too many failed authentications from one address → 429
    ├── OperationFailed           the action was valid but failed on the host (QEMU refused,
    │   │                         guest never booted) → 500-class only if virtpool is at fault;
    │   │                         reported as 502 "the hypervisor said no" otherwise
    │   └── BootTimeout           the guest agent never answered
    └── CommandTimeout            a command in a guest outlived its timeout (and was killed) → 504

Messages say what went wrong; ``hint`` says what to do next.
"""

from __future__ import annotations


class VirtpoolError(Exception):
    """Base class of virtpool's deliberate errors."""

    status: int = 500
    title: str = "virtpool error"

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class InvalidRequest(VirtpoolError):
    """The request is malformed or out of range; nothing was changed."""

    status = 422
    title = "invalid request"


class NotFound(VirtpoolError):
    """The named resource does not exist (or is not visible to the caller)."""

    status = 404
    title = "not found"


class Conflict(VirtpoolError):
    """The request clashes with the current state of the pool."""

    status = 409
    title = "conflict"


class StateError(Conflict):
    """An action was asked of a VM in a state that does not allow it."""

    title = "wrong state"

    def __init__(self, vm: str, actual: str, action: str, allowed: frozenset[str]) -> None:
        allowed_list = ", ".join(sorted(allowed)) or "none"
        super().__init__(
            f"cannot {action} VM '{vm}': it is {actual}",
            hint=f"{action} needs the VM to be one of: {allowed_list}",
        )
        self.vm = vm
        self.actual = actual
        self.action = action
        self.allowed = allowed

    def with_hint(self, hint: str) -> StateError:
        """The same refusal with another hint (what to do in this case)."""
        self.hint = hint
        return self


class InsufficientResources(VirtpoolError):
    """The host does not have the CPU, memory or disk asked for."""

    status = 409
    title = "insufficient resources"


class InsufficientStorage(InsufficientResources):
    """The host's data disk ran out of space while doing what was asked; nothing was kept."""

    status = 507
    title = "insufficient storage"


FREE_SPACE_HINT = ("free space on the host's data disk: delete unused images (virtpool image list, "
                   "virtpool image delete) or VMs (virtpool vm delete), then try again")


class Unauthorized(VirtpoolError):
    """Missing, unknown, expired or revoked credentials."""

    status = 401
    title = "unauthorized"


class Forbidden(VirtpoolError):
    """Valid credentials whose role does not allow the action."""

    status = 403
    title = "forbidden"


class RateLimited(VirtpoolError):
    """Too many failed authentications came from the caller's address; ``retry_after`` is how
    many seconds until it may try again."""

    status = 429
    title = "too many requests"

    def __init__(self, message: str, *, retry_after: int, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.retry_after = retry_after


class OperationFailed(VirtpoolError):
    """A valid action failed on the host."""

    status = 502
    title = "operation failed"


class BootTimeout(OperationFailed):
    """The guest did not answer its agent before the boot deadline."""

    title = "boot timeout"


class ImageDamaged(OperationFailed):
    """An image's bytes did not match its manifest's SHA-256 or size on their way; nothing of
    them was kept."""

    title = "image damaged"


class ImageUnavailable(VirtpoolError):
    """No reachable server holds the bytes of an image this server lacks."""

    status = 503
    title = "image unavailable"


class CommandTimeout(VirtpoolError):
    """A command run in a guest (`vm exec`) was still running at its timeout; it was killed."""

    status = 504
    title = "timed out"
