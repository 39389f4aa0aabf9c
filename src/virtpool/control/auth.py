"""API tokens: creation, hashing, checking, and the bootstrap admin token.

Tokens are 256-bit random secrets, so a plain SHA-256 is the right hash: there is nothing to
brute-force that a slow password hash would protect, and a fast hash keeps every request cheap.

A token that authenticated is remembered, by its hash, for ``VERIFIED_TTL_S``: every request
still presents and checks its token, but a burst of them costs one database read, not one each.
Revoking a token, or deleting its project, forgets it at once in this process; another server
sharing the database sees the revoke within ``VERIFIED_TTL_S``. Expiry is checked on every use.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from virtpool.control.store.tables import ProjectRow, TokenRow
from virtpool.model.errors import Conflict, InvalidRequest, NotFound, Unauthorized
from virtpool.model.roles import Role, is_pool_admin, not_found_project
from virtpool.model.spec import NAME_RULE, valid_name
from virtpool.model.token import TokenInfo

TOKEN_PREFIX = "vp_"
BOOTSTRAP_NAME = "bootstrap-admin"
# Long enough that a client's burst of requests reads its token once; short enough that a
# revoke made by another server sharing the database holds within a couple of seconds.
VERIFIED_TTL_S = 2.0
MAX_VERIFIED = 10_000  # tokens remembered at once; past that the cache starts afresh


@dataclass(frozen=True)
class Principal:
    """Who is calling."""

    token_id: str
    name: str
    role: str
    project_id: str | None = None  # None: pool-wide

    @property
    def pool_admin(self) -> bool:
        return is_pool_admin(self.role, self.project_id)


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_secret() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


@dataclass(frozen=True, slots=True)
class _Verified:
    """A token that authenticated: who it is, until when it is valid, when it was read."""

    principal: Principal
    expires_at: datetime | None
    read_at: float  # time.monotonic()


class TokenService:
    def __init__(self, sessions: sessionmaker[Session], *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._sessions = sessions
        self._revoke_listeners: list[Callable[[str], None]] = []
        self._listeners_lock = threading.Lock()
        self._clock = clock
        self._verified: dict[str, _Verified] = {}  # secret hash -> the token it authenticated
        # Bumped by every forget: a lookup that began before one does not refill the cache
        # with what it read (the revoke may have committed after its read).
        self._forgets = 0
        self._verified_lock = threading.Lock()

    def on_revoke(self, listener: Callable[[str], None]) -> Callable[[], None]:
        """Call ``listener(token_id)`` whenever this process revokes a token, before the revoke
        returns (open consoles and streams close on it); returns the function that removes it."""
        with self._listeners_lock:
            self._revoke_listeners.append(listener)

        def remove() -> None:
            with self._listeners_lock:
                self._revoke_listeners.remove(listener)

        return remove

    def create(self, name: str, role: str, expires_at: datetime | None = None,
               project_id: str | None = None, *, caller_project: str | None = None) -> str:
        """Store a new token and return its secret (the only time it is seen).

        ``project_id`` None makes a pool-wide token, which only the admin role may be.
        ``caller_project`` is the project of the token asking (None: a pool admin). Names are
        unique pool-wide, so a name taken outside that project is refused without saying where.
        """
        if not valid_name(name):
            raise InvalidRequest(f"'{name}' is not a valid token name", hint=NAME_RULE)
        if role not in set(Role):
            raise InvalidRequest(f"unknown role '{role}'", hint="use admin, member, viewer or metrics")
        if project_id is None and role not in (Role.ADMIN, Role.METRICS):
            raise InvalidRequest("only admin and metrics tokens can be pool-wide",
                                 hint="give the token a project")
        secret = new_secret()
        try:
            with self._sessions.begin() as session:
                if project_id is not None and session.get(ProjectRow, project_id) is None:
                    raise not_found_project(project_id)
                session.add(
                    TokenRow(
                        id=uuid.uuid4().hex, name=name, secret_hash=hash_secret(secret),
                        role=role, expires_at=expires_at, project_id=project_id,
                    )
                )
        except IntegrityError as err:
            raise self._name_taken(name, caller_project) from err
        return secret

    def _name_taken(self, name: str, caller_project: str | None) -> Conflict:
        with self._sessions() as session:
            owner = session.scalar(select(TokenRow.project_id).where(TokenRow.name == name))
        if caller_project is None or owner == caller_project:
            return Conflict(f"a token named '{name}' exists",
                            hint="pick another name (`virtpool token list` shows the names in use)")
        return Conflict(f"the token name '{name}' is not available: token names are unique "
                        "across the pool", hint=f"pick another name, e.g. '{caller_project}-{name}', "
                        "or leave out `--name` for a generated one")

    def list(self, project_id: str | None = None) -> list[TokenInfo]:
        """Every token (``project_id`` None) or one project's; never a secret or its hash."""
        query = select(TokenRow).order_by(TokenRow.created_at, TokenRow.name)
        if project_id is not None:
            query = query.where(TokenRow.project_id == project_id)
        with self._sessions() as session:
            return [_token_info(row) for row in session.scalars(query)]

    def get(self, ref: str, project_id: str | None = None) -> TokenInfo:
        """A token by name or id; within ``project_id`` when given (others are not found)."""
        query = select(TokenRow).where(or_(TokenRow.name == ref, TokenRow.id == ref))
        if project_id is not None:
            query = query.where(TokenRow.project_id == project_id)
        with self._sessions() as session:
            row = session.scalar(query)
        if row is None:
            raise NotFound(f"no token named '{ref}'", hint="see `virtpool token list`")
        return _token_info(row)

    def revoke(self, ref: str, project_id: str | None = None) -> TokenInfo:
        """Revoke at once (requests with it are refused from now on); revoking twice is harmless."""
        token = self.get(ref, project_id)
        with self._sessions.begin() as session:
            session.execute(update(TokenRow).where(TokenRow.id == token.id, TokenRow.revoked_at.is_(None))
                            .values(revoked_at=datetime.now(UTC)))
        self._forget(lambda p: p.token_id == token.id)
        with self._listeners_lock:
            listeners = list(self._revoke_listeners)
        for listener in listeners:
            listener(token.id)
        return self.get(token.id)

    def forget_project(self, project_id: str) -> None:
        """Forget the verified tokens of ``project_id`` (its tokens were deleted with it)."""
        self._forget(lambda p: p.project_id == project_id)

    def _forget(self, which: Callable[[Principal], bool]) -> None:
        with self._verified_lock:
            self._forgets += 1
            self._verified = {k: v for k, v in self._verified.items() if not which(v.principal)}

    def bootstrap(self, token_file: Path) -> bool:
        """On first start, create the admin token and write it to a 0600 file.

        Returns True when a token was created. Nothing happens once any token exists.
        """
        with self._sessions() as session:
            if session.scalar(select(TokenRow.id).limit(1)) is not None:
                return False
        secret = self.create(BOOTSTRAP_NAME, "admin")
        write_private_file(token_file, secret + "\n")
        return True

    def authenticate(self, secret: str | None) -> Principal:
        if not secret:
            raise Unauthorized(
                "this API needs a bearer token", hint="send 'Authorization: Bearer <token>'"
            )
        digest = hash_secret(secret)
        with self._verified_lock:
            known = self._verified.get(digest)
            forgets = self._forgets
        if known is not None and self._clock() - known.read_at < VERIFIED_TTL_S:
            if known.expires_at is not None and known.expires_at <= datetime.now(UTC):
                raise Unauthorized(f"token '{known.principal.name}' has expired")
            return known.principal
        read_at = self._clock()
        with self._sessions() as session:
            row = session.scalar(select(TokenRow).where(TokenRow.secret_hash == digest))
        # compare_digest on the hash keeps the check constant-time once the row is found.
        if row is None or not hmac.compare_digest(row.secret_hash, digest):
            raise Unauthorized("the token is not valid", hint="check VIRTPOOL_TOKEN or the token file")
        now = datetime.now(UTC)
        if row.revoked_at is not None:
            raise Unauthorized(f"token '{row.name}' was revoked")
        expires_at = _aware(row.expires_at) if row.expires_at is not None else None
        if expires_at is not None and expires_at <= now:
            raise Unauthorized(f"token '{row.name}' has expired")
        caller = Principal(token_id=row.id, name=row.name, role=row.role, project_id=row.project_id)
        with self._verified_lock:
            if self._forgets == forgets:
                if len(self._verified) >= MAX_VERIFIED:
                    self._verified.clear()
                self._verified[digest] = _Verified(caller, expires_at, read_at)
        return caller


def write_private_file(path: Path, text: str) -> None:
    """Write ``text`` to a file only its owner can read, atomically.

    The temporary file is created fresh (O_EXCL, no symlink followed), so a leftover or planted
    file of another mode can never carry the secret.
    """
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.replace(tmp, path)


def _token_info(row: TokenRow) -> TokenInfo:
    return TokenInfo(
        id=row.id, name=row.name, role=row.role, project=row.project_id,
        created_at=_aware(row.created_at),
        expires_at=_aware(row.expires_at) if row.expires_at else None,
        revoked_at=_aware(row.revoked_at) if row.revoked_at else None,
    )


def _aware(moment: datetime) -> datetime:
    # SQLite hands back naive datetimes; every time virtpool stores is UTC.
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
