"""API tokens against a real SQLite database: bootstrap, hashing, expiry and revocation."""

from __future__ import annotations

import hashlib
import os
import stat
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, event, select, text
from sqlalchemy.orm import Session, sessionmaker

from virtpool.control.auth import BOOTSTRAP_NAME, VERIFIED_TTL_S, TokenService, hash_secret
from virtpool.control.projects import ProjectService
from virtpool.control.store import db
from virtpool.control.store.tables import TokenRow
from virtpool.model.errors import Unauthorized


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    engine = db.make_engine(db.sqlite_url(tmp_path / "virtpool.db"))
    db.migrate(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def sessions(engine: Engine) -> sessionmaker[Session]:
    return db.session_factory(engine)


@pytest.fixture
def service(sessions: sessionmaker[Session]) -> TokenService:
    return TokenService(sessions)


def db_bytes(engine: Engine, tmp_path: Path) -> bytes:
    """Every byte SQLite has on disk for this database (main file and WAL)."""
    with engine.connect() as connection:
        connection.execute(text("PRAGMA wal_checkpoint(FULL)"))
    return b"".join(p.read_bytes() for p in tmp_path.glob("virtpool.db*"))


def set_column(sessions: sessionmaker[Session], secret: str, **values: object) -> None:
    with sessions.begin() as session:
        row = session.scalar(
            select(TokenRow).where(TokenRow.secret_hash == hash_secret(secret))
        )
        assert row is not None
        for key, value in values.items():
            setattr(row, key, value)


class TestBootstrap:
    def test_writes_private_token_file_that_is_admin(
        self, service: TokenService, tmp_path: Path
    ) -> None:
        token_file = tmp_path / "admin-token"
        assert service.bootstrap(token_file) is True
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        secret = token_file.read_text().strip()
        assert secret.startswith("vp_")
        assert len(secret) >= 40
        principal = service.authenticate(secret)
        assert principal.role == "admin"
        assert principal.name == BOOTSTRAP_NAME
        assert not token_file.with_suffix(".tmp").exists()

    def test_token_file_private_despite_permissive_umask(
        self, service: TokenService, tmp_path: Path
    ) -> None:
        old = os.umask(0o000)
        try:
            service.bootstrap(tmp_path / "admin-token")
        finally:
            os.umask(old)
        assert stat.S_IMODE((tmp_path / "admin-token").stat().st_mode) == 0o600

    def test_token_file_private_despite_stale_tmp_file(
        self, service: TokenService, tmp_path: Path
    ) -> None:
        """A leftover (or planted) world-readable temp file must not lend its mode to the token."""
        token_file = tmp_path / "admin-token"
        stale = token_file.with_suffix(".tmp")
        stale.write_text("old\n")
        stale.chmod(0o644)
        assert service.bootstrap(token_file) is True
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600

    def test_db_holds_only_the_hash(
        self,
        service: TokenService,
        sessions: sessionmaker[Session],
        engine: Engine,
        tmp_path: Path,
    ) -> None:
        token_file = tmp_path / "admin-token"
        service.bootstrap(token_file)
        secret = token_file.read_text().strip()
        with sessions() as session:
            rows = session.scalars(select(TokenRow)).all()
        assert len(rows) == 1
        assert rows[0].secret_hash == hashlib.sha256(secret.encode()).hexdigest()
        raw = db_bytes(engine, tmp_path)
        assert rows[0].secret_hash.encode() in raw  # we are looking at the right bytes
        assert secret.encode() not in raw
        assert secret.removeprefix("vp_").encode() not in raw

    def test_second_bootstrap_does_nothing(
        self, service: TokenService, sessions: sessionmaker[Session], tmp_path: Path
    ) -> None:
        token_file = tmp_path / "admin-token"
        assert service.bootstrap(token_file) is True
        first = token_file.read_text()
        assert service.bootstrap(token_file) is False
        assert token_file.read_text() == first
        other = tmp_path / "other-token"
        assert service.bootstrap(other) is False
        assert not other.exists()
        with sessions() as session:
            assert len(session.scalars(select(TokenRow)).all()) == 1
        service.authenticate(first.strip())

    def test_no_bootstrap_once_any_token_exists(
        self, service: TokenService, tmp_path: Path
    ) -> None:
        service.create("ci", "viewer", project_id="default")
        assert service.bootstrap(tmp_path / "admin-token") is False
        assert not (tmp_path / "admin-token").exists()


class TestAuthenticate:
    @pytest.mark.parametrize("secret", [None, ""])
    def test_missing_token(self, service: TokenService, secret: str | None) -> None:
        service.create("ci", "viewer", project_id="default")
        with pytest.raises(Unauthorized) as caught:
            service.authenticate(secret)
        assert caught.value.status == 401
        assert caught.value.hint is not None and "Bearer" in caught.value.hint

    def test_wrong_token(self, service: TokenService) -> None:
        secret = service.create("ci", "viewer", project_id="default")
        for wrong in (
            "vp_nope",
            secret + "x",
            secret[:-1],
            secret.upper(),
            hash_secret(secret),
        ):
            with pytest.raises(Unauthorized):
                service.authenticate(wrong)

    def test_created_token_authenticates_with_its_role(
        self, service: TokenService
    ) -> None:
        user = service.create("alice", "viewer", project_id="default")
        admin = service.create("root", "admin")
        assert user != admin
        alice = service.authenticate(user)
        assert (alice.name, alice.role, alice.project_id) == ("alice", "viewer", "default")
        assert service.authenticate(admin).role == "admin"
        assert alice.token_id != service.authenticate(admin).token_id

    def test_future_expiry_accepted(self, service: TokenService) -> None:
        secret = service.create(
            "ci", "viewer", project_id="default", expires_at=datetime.now(UTC) + timedelta(hours=1)
        )
        assert service.authenticate(secret).name == "ci"

    def test_expired_refused(self, sessions: sessionmaker[Session]) -> None:
        clock = [0.0]
        service = TokenService(sessions, clock=lambda: clock[0])
        secret = service.create("ci", "viewer", project_id="default")
        service.authenticate(secret)
        # Written straight to the database, as another server would: read again after the TTL.
        set_column(
            sessions, secret, expires_at=datetime.now(UTC) - timedelta(seconds=5)
        )
        clock[0] += VERIFIED_TTL_S
        with pytest.raises(Unauthorized) as caught:
            service.authenticate(secret)
        assert "expired" in caught.value.message
        assert "ci" in caught.value.message

    def test_expired_at_creation_refused(self, service: TokenService) -> None:
        secret = service.create(
            "old", "viewer", project_id="default", expires_at=datetime.now(UTC) - timedelta(days=1)
        )
        with pytest.raises(Unauthorized):
            service.authenticate(secret)

    def test_revoked_refused(
        self, service: TokenService, sessions: sessionmaker[Session]
    ) -> None:
        secret = service.create("ci", "viewer", project_id="default")
        set_column(sessions, secret, revoked_at=datetime.now(UTC))
        with pytest.raises(Unauthorized) as caught:
            service.authenticate(secret)
        assert "revoked" in caught.value.message

    def test_revoked_bootstrap_token_refused(
        self, service: TokenService, sessions: sessionmaker[Session], tmp_path: Path
    ) -> None:
        token_file = tmp_path / "admin-token"
        service.bootstrap(token_file)
        secret = token_file.read_text().strip()
        set_column(sessions, secret, revoked_at=datetime.now(UTC))
        with pytest.raises(Unauthorized):
            service.authenticate(secret)

    def test_revoking_one_token_leaves_others(
        self, service: TokenService, sessions: sessionmaker[Session]
    ) -> None:
        one = service.create("one", "viewer", project_id="default")
        two = service.create("two", "viewer", project_id="default")
        set_column(sessions, one, revoked_at=datetime.now(UTC))
        assert service.authenticate(two).name == "two"


class TestVerifiedTokens:
    """A token that authenticated is remembered briefly; revokes and expiry still hold."""

    def test_a_burst_reads_the_token_once(self, service: TokenService, engine: Engine) -> None:
        secret = service.create("ci", "viewer", project_id="default")
        statements: list[str] = []
        event.listen(engine, "before_cursor_execute",
                     lambda conn, cursor, sql, *rest: statements.append(sql))
        for _ in range(20):
            assert service.authenticate(secret).name == "ci"
        assert len([s for s in statements if "tokens" in s]) == 1

    def test_a_revoke_holds_at_once(self, service: TokenService) -> None:
        secret = service.create("ci", "viewer", project_id="default")
        other = service.create("other", "viewer", project_id="default")
        service.authenticate(secret)
        service.authenticate(other)
        service.revoke("ci")
        with pytest.raises(Unauthorized) as caught:
            service.authenticate(secret)
        assert "revoked" in caught.value.message
        assert service.authenticate(other).name == "other"

    def test_a_revoke_by_another_server_holds_after_the_ttl(
        self, sessions: sessionmaker[Session]
    ) -> None:
        clock = [0.0]
        here = TokenService(sessions, clock=lambda: clock[0])
        there = TokenService(sessions)  # another server on the same database
        secret = here.create("ci", "viewer", project_id="default")
        here.authenticate(secret)
        there.revoke("ci")
        clock[0] += VERIFIED_TTL_S
        with pytest.raises(Unauthorized) as caught:
            here.authenticate(secret)
        assert "revoked" in caught.value.message

    def test_a_deleted_projects_tokens_are_refused_at_once(
        self, service: TokenService, sessions: sessionmaker[Session]
    ) -> None:
        projects = ProjectService(sessions, on_delete=service.forget_project)
        projects.create("team")
        secret = service.create("ci", "member", project_id="team")
        admin = service.create("root", "admin")
        assert service.authenticate(secret).project_id == "team"
        service.authenticate(admin)
        projects.delete("team")
        with pytest.raises(Unauthorized) as caught:
            service.authenticate(secret)
        assert "not valid" in caught.value.message
        assert service.authenticate(admin).name == "root"

    def test_a_remembered_token_still_expires(self, service: TokenService) -> None:
        expires = datetime.now(UTC) + timedelta(seconds=VERIFIED_TTL_S / 2)
        secret = service.create("ci", "viewer", project_id="default", expires_at=expires)
        assert service.authenticate(secret).name == "ci"
        time.sleep(max(0.0, (expires - datetime.now(UTC)).total_seconds()) + 0.05)
        with pytest.raises(Unauthorized) as caught:
            service.authenticate(secret)
        assert "expired" in caught.value.message


def test_hash_is_sha256_hex() -> None:
    assert hash_secret("abc") == hashlib.sha256(b"abc").hexdigest()
    assert len(hash_secret("vp_x")) == 64
