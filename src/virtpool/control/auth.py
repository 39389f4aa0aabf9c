"""API tokens: creation, hashing, checking, and the bootstrap admin token.

Tokens are 256-bit random secrets, so a plain SHA-256 is the right hash: there is nothing to
brute-force that a slow password hash would protect, and a fast hash keeps every request cheap.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from virtpool.control.store.tables import TokenRow
from virtpool.model.errors import Unauthorized

TOKEN_PREFIX = "vp_"
BOOTSTRAP_NAME = "bootstrap-admin"


@dataclass(frozen=True)
class Principal:
    """Who is calling."""

    token_id: str
    name: str
    role: str


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_secret() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


class TokenService:
    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self._sessions = sessions

    def create(self, name: str, role: str, expires_at: datetime | None = None) -> str:
        """Store a new token and return its secret (the only time it is seen)."""
        secret = new_secret()
        with self._sessions.begin() as session:
            session.add(
                TokenRow(
                    id=uuid.uuid4().hex, name=name, secret_hash=hash_secret(secret),
                    role=role, expires_at=expires_at,
                )
            )
        return secret

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
        with self._sessions() as session:
            row = session.scalar(select(TokenRow).where(TokenRow.secret_hash == digest))
        # compare_digest on the hash keeps the check constant-time once the row is found.
        if row is None or not hmac.compare_digest(row.secret_hash, digest):
            raise Unauthorized("the token is not valid", hint="check VIRTPOOL_TOKEN or the token file")
        now = datetime.now(UTC)
        if row.revoked_at is not None:
            raise Unauthorized(f"token '{row.name}' was revoked")
        if row.expires_at is not None and _aware(row.expires_at) <= now:
            raise Unauthorized(f"token '{row.name}' has expired")
        return Principal(token_id=row.id, name=row.name, role=row.role)


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


def _aware(moment: datetime) -> datetime:
    # SQLite hands back naive datetimes; every time virtpool stores is UTC.
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
