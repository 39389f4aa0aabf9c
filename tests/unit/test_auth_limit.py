"""The failed-authentication limiter on a real SQLite database, with a clock the test moves."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from virtpool.api.auth_limit import LIMIT, WINDOW_S, FailedAuthLimiter
from virtpool.control.audit import AuditLog
from virtpool.control.auth import TokenService
from virtpool.control.store import db
from virtpool.model.errors import RateLimited, Unauthorized


@pytest.fixture
def sessions(tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    engine = db.open_database(db.sqlite_url(tmp_path / "state.db"))
    yield db.session_factory(engine)
    engine.dispose()


class Clock:
    def __init__(self) -> None:
        self.now = 1_200_020.0  # 20 s into a window

    def __call__(self) -> float:
        return self.now


def fail(limiter: FailedAuthLimiter, tokens: TokenService, secret: str, address: str = "10.0.0.9") -> type:
    with pytest.raises((Unauthorized, RateLimited)) as caught:
        limiter.authenticate(tokens, secret, address)
    return caught.type


def test_distinct_bad_tokens_are_limited_until_the_window_ends(sessions: sessionmaker[Session]) -> None:
    tokens, audit, clock = TokenService(sessions), AuditLog(sessions), Clock()
    limiter = FailedAuthLimiter(audit, clock=clock)
    good = tokens.create("good", "admin")
    fresh = tokens.create("fresh", "admin")
    limiter.authenticate(tokens, good, "10.0.0.9")
    assert [fail(limiter, tokens, f"vp_bad{i}") for i in range(LIMIT)] == [Unauthorized] * LIMIT
    with pytest.raises(RateLimited) as limited:
        limiter.authenticate(tokens, "vp_another", "10.0.0.9")
    assert limited.value.retry_after == WINDOW_S - 20
    assert limiter.authenticate(tokens, good, "10.0.0.9").name == "good"  # proved itself before
    assert fail(limiter, tokens, fresh) is RateLimited  # never seen: not looked up
    assert limiter.authenticate(tokens, fresh, "10.0.0.8").name == "fresh"  # another address
    clock.now += WINDOW_S - 20
    assert limiter.authenticate(tokens, fresh, "10.0.0.9").name == "fresh"  # a new window

    limiter.flush()
    rows = [e for e in audit.list() if e.action == "auth.failed"]
    assert [(e.target, e.outcome.split(" (")[1]) for e in rows] == [("10.0.0.9", f"{LIMIT} answered 401, 2 429)")]
    assert rows[0].outcome.startswith(f"{LIMIT + 2} failed authentications from 10.0.0.9")


def test_one_bad_token_repeated_is_not_a_guess(sessions: sessionmaker[Session]) -> None:
    tokens = TokenService(sessions)
    limiter = FailedAuthLimiter(AuditLog(sessions), clock=Clock())
    assert {fail(limiter, tokens, "vp_stale") for _ in range(3 * LIMIT)} == {Unauthorized}
