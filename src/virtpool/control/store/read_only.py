"""The API's hot reads (GET one VM, a page of VMs) on connections of their own.

On PostgreSQL a GET through the write engine cost five round trips: the pool's pre-ping
(``BEGIN``, ``SELECT 1``), the VM and its children, and the ``ROLLBACK`` that returns the
connection, each of them Python work in the server too (py-spy: /work/notes/s5-pgread.md).
Here the reads run in autocommit (no ``BEGIN``/``ROLLBACK``: under PostgreSQL's READ COMMITTED
every statement takes its own snapshot anyway, so a transaction around SELECTs adds no
consistency) and without the pre-ping; one VM is one statement (control/vms/reads.py), so a
GET is one round trip. A connection that died meanwhile (the server restarted, an idle
connection was cut) fails its first statement; SQLAlchemy then discards every pooled
connection older than the failure, and the read, which changes nothing, is run once more on a
fresh one. So a restarted database costs the next read a reconnect, not an error.

Writes keep the engine with the pre-ping: a write cannot be retried blindly (its commit may
have gone through before the connection broke).

The reads stay in worker threads: psycopg's async driver on the event loop (SQLAlchemy's
asyncio layer) was measured against them and cost more CPU per read, not less.

SQLite reads stay on the one engine: there is no network, no pre-ping, and pysqlite sends no
``BEGIN`` before a SELECT.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from sqlalchemy import Connection, Engine, create_engine
from sqlalchemy.exc import DBAPIError

T = TypeVar("T")

# Kept open for the threads that read at once under load: a pool of 10 opened and closed a
# connection per request past its tenth (py-spy, 32 clients). None past those, so that with the
# write engine's 60 one server stays within PostgreSQL's default max_connections (100, 3 of
# them reserved); a 33rd reader waits the millisecond until one is free.
POOL_SIZE = 32
MAX_OVERFLOW = 0


class ReadOnly:
    """Runs read-only queries: on PostgreSQL in autocommit, retried once on a lost connection."""

    def __init__(self, engine: Engine) -> None:
        if engine.dialect.name == "sqlite":
            self._engine, self._own = engine, False
        else:
            self._engine = create_engine(engine.url, pool_size=POOL_SIZE, max_overflow=MAX_OVERFLOW,
                                         isolation_level="AUTOCOMMIT")
            self._own = True

    def run(self, read: Callable[[Connection], T]) -> T:
        """``read(connection)``; once more on a fresh connection if the first one had died.
        ``read`` must only read: it may run twice."""
        try:
            with self._engine.connect() as connection:
                return read(connection)
        except DBAPIError as err:
            if not err.connection_invalidated:
                raise
        with self._engine.connect() as connection:
            return read(connection)

    def dispose(self) -> None:
        """Close the pooled connections (of its own engine only)."""
        if self._own:
            self._engine.dispose()
