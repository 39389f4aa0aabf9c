"""Long-lived connections (the console websocket, the event stream) keep the right that opened
them, or end.

A request is checked once; a console or a stream lives on for hours. An ``AccessGuard`` checks
its caller again every ``RECHECK_S`` (the token may have expired, been revoked by another server
sharing the database, or its project deleted; the VM may have left the project's reach) and at
once when this process revokes the token. Its ``lost`` flag is set before the revoking request
answers, so that a console drops every byte typed after the revocation returned.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from virtpool.control.auth import TokenService
from virtpool.model.errors import VirtpoolError

# A revocation in another process (or an expiry, or a deleted project or VM) is seen within this
# long; a revocation in this process at once. One indexed SELECT per open connection per second.
RECHECK_S = 1.0

# The websocket close code for "you may no longer hold this" (RFC 6455: policy violation).
POLICY_VIOLATION = 1008


class AccessGuard:
    """Watches one connection's right to stay open.

    ``check`` raises a ``VirtpoolError`` once the caller may no longer hold the connection (it
    runs in a worker thread: it may read the database). ``token_id`` is the caller's token.
    """

    close_code = POLICY_VIOLATION  # what a websocket it guards is closed with once lost

    def __init__(self, tokens: TokenService, token_id: str, check: Callable[[], object]) -> None:
        self._tokens = tokens
        self._token_id = token_id
        self._check = check
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self.lost = False  # read before every byte forwarded; set from any thread
        self.reason = ""

    def _revoked(self, token_id: str) -> None:
        # Runs in the revoking request's thread, before it answers.
        if token_id == self._token_id:
            self.lost = True
            self.reason = "the token was revoked"
            self._loop.call_soon_threadsafe(self._wake.set)

    async def watch(self) -> str:
        """Return, with the reason, once the caller has lost the right to the connection."""
        remove = self._tokens.on_revoke(self._revoked)
        try:
            while not self.lost:
                try:
                    await asyncio.to_thread(self._check)
                except VirtpoolError as err:
                    self.reason = err.message
                    self.lost = True
                    break
                try:
                    await asyncio.wait_for(self._wake.wait(), RECHECK_S)
                except TimeoutError:
                    pass
            return self.reason
        finally:
            remove()
