"""Database engine, sessions and migrations.

SQLite runs in WAL mode so that readers (API requests) never wait for the writer; every
connection waits up to ``BUSY_TIMEOUT_MS`` for a lock instead of failing at once.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.exc import ArgumentError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from virtpool.control.store import room
from virtpool.model.errors import VirtpoolError

MIGRATIONS = Path(__file__).parent / "migrations"
BUSY_TIMEOUT_MS = 10_000
# Requests run in a thread pool of 40 (AnyIO's default) besides the VM workers: enough
# connections that none of them waits for one.
POOL_SIZE = 40
MAX_OVERFLOW = 40


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path}"


class DatabaseUnavailable(VirtpoolError):
    status = 503
    title = "database unavailable"


def open_database(url: str) -> Engine:
    """An engine on ``url`` with the schema migrated to the newest revision."""
    try:
        engine = make_engine(normalize_url(url))
        migrate(engine)
        if engine.dialect.name == "sqlite":
            room.keep_room(engine)  # so that a full data disk cannot stop its writes
    except ArgumentError as err:
        raise DatabaseUnavailable(f"cannot read database URL: {err}",
                                  hint="e.g. postgresql://user@host:5432/dbname") from err
    except ValueError as err:  # e.g. a port that is not a number
        raise DatabaseUnavailable(f"cannot read database URL: {err}",
                                  hint="e.g. postgresql://user@host:5432/dbname") from err
    except ModuleNotFoundError as err:
        raise DatabaseUnavailable(f"no driver for this database URL: {err}",
                                  hint="use postgresql:// (psycopg) or sqlite:///PATH") from err
    except OperationalError as err:
        raise DatabaseUnavailable(f"cannot open the database: {err.orig}",
                                  hint="is the database server running, and the URL right?") from err
    return engine


def normalize_url(url: str) -> str:
    """Accept the URLs PostgreSQL's own tools take (``postgresql://``, ``postgres://``) and
    pick the psycopg 3 driver for them; other URLs pass unchanged."""
    scheme, sep, rest = url.partition("://")
    if sep and scheme in ("postgresql", "postgres"):
        return f"postgresql+psycopg://{rest}"
    return url


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        # As many pooled connections as threads that may hold one at once (below): SQLAlchemy's
        # default of 5 (+10 overflow) opened and closed a connection, with its pragmas, for
        # nearly every request under 32 concurrent clients. An idle one costs a file handle.
        engine = create_engine(url, pool_size=POOL_SIZE, max_overflow=MAX_OVERFLOW,
                               connect_args={"check_same_thread": False, "timeout": BUSY_TIMEOUT_MS / 1000})

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn, _record) -> None:  # type: ignore[no-untyped-def]
            cursor = dbapi_conn.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            cursor.close()

        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=20, max_overflow=MAX_OVERFLOW)


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest revision (a no-op when it is there)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)
