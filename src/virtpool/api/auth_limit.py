"""Failed authentications, limited per client address and counted in the audit log in aggregate.

The rule: an address that presented ``LIMIT`` distinct failing tokens in one ``WINDOW_S``
window is answered 429 (with Retry-After: the rest of the window) before its token is looked
up, so a flood costs a dictionary lookup, not a database query, and a guesser learns nothing
more until the window ends. Distinct, because guessing means trying new tokens: a client that
retries its one revoked or expired token is misconfigured, not guessing, and keeps getting the
401 that says why (counted in the audit row all the same). Callers never pay for the limiter
with their own successes:

* a valid token never counts: a caller who is not failing is never limited;
* callers from other addresses are untouched;
* a token that authenticated in the last ``KNOWN_GOOD_S`` still works from a limited address
  (an attacker sharing the admin's address, e.g. loopback on a shared host, cannot lock the
  admin's CLI out). That lets no guess through: a guess passes only if it hashes to a token
  that already proved itself, which is as likely as guessing that token outright.

The audit log gets one row per address and window, its count brought up to date at most every
``FLUSH_S`` (so a flood of 2,000 attempts is one row, written a few times, not 2,000 rows).
Addresses are the TCP peer's: a proxy's X-Forwarded-For is not trusted.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from starlette.requests import HTTPConnection

from virtpool.control.audit import AuditLog
from virtpool.control.auth import Principal, TokenService, hash_secret
from virtpool.model.errors import RateLimited, Unauthorized

log = logging.getLogger(__name__)

# 20 distinct failing tokens a minute: far above a user mistyping one, far below a script guessing.
LIMIT = 20
WINDOW_S = 60.0
FLUSH_S = 1.0
KNOWN_GOOD_S = 3600.0
MAX_KNOWN_GOOD = 10_000  # tokens remembered; the oldest is forgotten first
AUDIT_ACTION = "auth.failed"


@dataclass
class _Window:
    """One address's failures in one window."""

    start: float  # wall-clock seconds, a multiple of WINDOW_S
    failed: int = 0  # answered 401
    guesses: set[str] = field(default_factory=set)  # the distinct failing tokens' hashes, up to LIMIT
    refused: int = 0  # answered 429 without a look at the token
    written: tuple[int, int] = (0, 0)
    row_id: int | None = None

    def outcome(self, address: str, failed: int, refused: int) -> str:
        start = datetime.fromtimestamp(self.start, UTC).strftime("%Y-%m-%d %H:%M:%S")
        return (f"{failed + refused} failed authentications from {address} in the window from "
                f"{start} UTC ({failed} answered 401, {refused} 429)")


def client_address(connection: HTTPConnection) -> str:
    """The TCP peer's address (a proxy's forwarding headers are not trusted)."""
    return connection.client.host if connection.client else "unknown"


class FailedAuthLimiter:
    """Counts failed authentications per address; refuses an address over the limit."""

    def __init__(self, audit: AuditLog, *, limit: int = LIMIT, window_s: float = WINDOW_S,
                 clock: Callable[[], float] = time.time) -> None:
        self._audit = audit
        self._limit = limit
        self._window_s = window_s
        self._clock = clock
        # Counting takes _lock (held for microseconds); audit writes take _write_lock, so that no
        # caller waits for the database on the limiter's account.
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._windows: dict[tuple[str, float], _Window] = {}  # (address, window start) -> counts
        self._known_good: dict[str, float] = {}  # token hash -> when it last authenticated
        self._flush_timer: threading.Timer | None = None

    def authenticate(self, tokens: TokenService, secret: str | None, address: str) -> Principal:
        """``tokens.authenticate``, limited: RateLimited for an address over the limit."""
        digest = hash_secret(secret) if secret else ""
        self._admit(address, digest)
        try:
            caller = tokens.authenticate(secret)
        except Unauthorized:
            if self._count(address, refused=False, digest=digest):
                self.flush()  # the window's row exists before the first refusal is answered
            raise
        with self._lock:
            self._known_good.pop(digest, None)  # re-inserted last: the dict is oldest first
            self._known_good[digest] = self._clock()
            if len(self._known_good) > MAX_KNOWN_GOOD:
                del self._known_good[next(iter(self._known_good))]
        return caller

    def _start(self, now: float) -> float:
        return now - now % self._window_s

    def _admit(self, address: str, digest: str) -> None:
        now = self._clock()
        start = self._start(now)
        with self._lock:
            window = self._windows.get((address, start))
            if window is None or len(window.guesses) < self._limit:
                return
            seen = self._known_good.get(digest)
            if seen is not None and now - seen < KNOWN_GOOD_S:
                return
        self._count(address, refused=True)
        retry_after = max(1, math.ceil(start + self._window_s - now))
        raise RateLimited(
            f"too many failed authentications from {address}",
            retry_after=retry_after, hint=f"check the token, then try again in {retry_after} s")

    def _count(self, address: str, *, refused: bool, digest: str = "") -> bool:
        """Count one failure; True when it opened the address's window."""
        start = self._start(self._clock())
        with self._lock:
            opened = (address, start) not in self._windows
            window = self._windows.setdefault((address, start), _Window(start))
            if refused:
                window.refused += 1
            else:
                window.failed += 1
                if len(window.guesses) < self._limit:
                    window.guesses.add(digest)
            if self._flush_timer is None:
                self._flush_timer = threading.Timer(FLUSH_S, self.flush)
                self._flush_timer.daemon = True
                self._flush_timer.start()
        return opened

    def flush(self) -> None:
        """Bring the audit rows up to date, and forget the windows that are over."""
        with self._write_lock:
            now = self._clock()
            with self._lock:
                self._flush_timer = None
                due = [(address, window, (window.failed, window.refused))
                       for (address, _), window in self._windows.items()]
                for key, window in list(self._windows.items()):
                    # Kept one window longer than it lasts: a failure counted at its very end
                    # still finds it (and its row) rather than starting a second row.
                    if window.start + 2 * self._window_s <= now:
                        del self._windows[key]  # its last count is in ``due``
            for address, window, counts in due:
                if counts != window.written:
                    self._write(address, window, counts)

    def _write(self, address: str, window: _Window, counts: tuple[int, int]) -> None:
        try:
            window.row_id = self._audit.count(window.row_id, "anonymous", AUDIT_ACTION, address,
                                              window.outcome(address, *counts))
            window.written = counts
        except Exception:  # the audit row is a record, not a gate: requests go on without it
            log.exception("could not write the failed-authentication count of %s", address)
