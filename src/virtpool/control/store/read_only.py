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

A page of VMs is read in a worker thread through the engine here. GET of one VM is read from
the event loop, through psycopg's async connections without SQLAlchemy's execution layer
(store/async_reads.py, same semantics): a third of the CPU of the read in a thread. (SQLAlchemy's
own asyncio layer, measured earlier, cost more CPU per read than the threads, not less.)

SQLite reads stay on the one engine: there is no network, no pre-ping, and pysqlite sends no
``BEGIN`` before a SELECT.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, create_engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql import Executable

from virtpool.control.store.async_reads import AsyncReads

T = TypeVar("T")

# Kept open for the reads under load, in threads and from the event loop (as many of each): a
# pool of 10 opened and closed a connection per request past its tenth (py-spy, 32 clients).
# None past those, so that with the write engine's 60 one server stays within PostgreSQL's
# default max_connections (100, 3 of them reserved); a 17th reader waits the fraction of a
# millisecond until one is free (two cores run two reads at once anyway).
POOL_SIZE = 16
MAX_OVERFLOW = 0


class ReadOnly:
    """Runs read-only queries: on PostgreSQL in autocommit, retried once on a lost connection."""

    def __init__(self, engine: Engine) -> None:
        self._async: AsyncReads | None = None
        if engine.dialect.name == "sqlite":
            self._engine, self._own = engine, False
        else:
            self._engine = create_engine(engine.url, pool_size=POOL_SIZE, max_overflow=MAX_OVERFLOW,
                                         isolation_level="AUTOCOMMIT")
            self._own = True
            if engine.dialect.name == "postgresql":
                self._async = AsyncReads(self._engine, POOL_SIZE)

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

    async def rows(self, statement: Executable, params: dict[str, Any]) -> Sequence[Sequence[Any]]:
        """The rows of the read-only ``statement``, from the event loop: on PostgreSQL without
        holding it (store/async_reads.py); on SQLite at once, in the loop's thread, since a
        local read costs less than the hop to a worker thread and back (py-spy,
        /work/notes/s4-read.md). It may run twice, as :meth:`run`'s ``read``."""
        if self._async is not None:
            return await self._async.rows(statement, params)
        return self.run(lambda connection: connection.execute(statement, params).all())

    def dispose(self) -> None:
        """Close the pooled connections (of its own engine only)."""
        if self._async is not None:
            self._async.dispose()
        if self._own:
            self._engine.dispose()
