"""Read-only Core statements run on PostgreSQL from the event loop: psycopg's own async
connections, without SQLAlchemy's execution layer and without a worker thread.

Profiled under 32 clients (py-spy, /work/notes/s8-api.md), a GET of one VM on PostgreSQL cost
the server about twice the CPU it costs on SQLite, and two thirds of that was in the worker
threads that ran the one read: the hop to them and back, the GIL handed between 32 threads and
the loop, and SQLAlchemy's connection checkout, execution context and result set around a
single statement. Measured apart (same query, 32 concurrent callers): 495-558 µs of CPU a read
through SQLAlchemy in threads, 220-237 µs through plain psycopg in threads, 132-182 µs through
psycopg's async connections on the loop.

The semantics are those of store/read_only.py: autocommit (no ``BEGIN``/``ROLLBACK``: under
READ COMMITTED each statement has its own snapshot), no pre-ping, and a read that found its
connection dead (the database restarted) is run once more on a fresh one, with every idle
connection from before the failure dropped. Connections are made with the engine's own connect
arguments (the same server, user and psycopg adapters). The statements are compiled once by the
engine's dialect; their literal parameters are kept and the caller's merged in.

A connection belongs to the event loop it was made on; a read from another loop (each test
client runs its own) starts afresh there.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Mapping
from typing import Any

import psycopg
from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql import Executable


class UnsupportedStatement(TypeError):
    """A statement that cannot be run from its compiled text alone."""


class _Lost(Exception):
    """The connection died under a read (``error``): worth one more try on a fresh one."""

    def __init__(self, error: psycopg.Error) -> None:
        super().__init__(str(error))
        self.error = error


class _Compiled:
    """A statement's SQL for psycopg, with the values of its literal parameters."""

    def __init__(self, statement: Executable, engine: Engine) -> None:
        compiled = statement.compile(dialect=engine.dialect)
        if compiled.positiontup or compiled.post_compile_params or compiled.escaped_bind_names:
            raise UnsupportedStatement(
                "this statement needs SQLAlchemy to render its parameters (expanding, "
                "positional or escaped names); run it through store/read_only.py instead")
        self.sql = str(compiled)
        self.required = frozenset(b.key for b in compiled.binds.values() if b.required)
        self.literals = {name: value for name, value
                         in compiled.construct_params(dict.fromkeys(self.required)).items()
                         if name not in self.required}


class AsyncReads:
    """Runs read-only statements on PostgreSQL from the event loop (up to ``size`` at once)."""

    def __init__(self, engine: Engine, size: int) -> None:
        if engine.dialect.name != "postgresql":
            raise ValueError(f"AsyncReads is for PostgreSQL, not {engine.dialect.name}")
        self._engine = engine
        self._size = size
        self._args, self._kwargs = engine.dialect.create_connect_args(engine.url)
        self._compiled: dict[Executable, _Compiled] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._idle: list[psycopg.AsyncConnection[Any]] = []
        self._mine: set[psycopg.AsyncConnection[Any]] = set()  # this loop's, idle or lent
        self._opening = 0
        self._generation = 0  # bumped by dispose
        self._waiters: deque[asyncio.Future[psycopg.AsyncConnection[Any] | None]] = deque()

    async def rows(self, statement: Executable, params: Mapping[str, Any]) -> list[tuple[Any, ...]]:
        """Every row of ``statement`` with ``params``; once more on a fresh connection if the
        first one had died. ``statement`` must only read: it may run twice. The driver's errors
        come as SQLAlchemy's (``DataError``, ``OperationalError``…), as through an engine."""
        compiled = self._compiled.get(statement)
        if compiled is None:
            compiled = self._compiled[statement] = _Compiled(statement, self._engine)
        missing = compiled.required - params.keys()
        if missing:
            raise ValueError(f"no value for the statement's parameters {sorted(missing)}")
        values = {**compiled.literals, **params}
        try:
            return await self._run(compiled.sql, values)
        except _Lost:
            pass
        try:
            return await self._run(compiled.sql, values)
        except _Lost as lost:
            raise self._wrapped(compiled.sql, values, lost.error, invalidated=True) from lost.error

    @staticmethod
    def _wrapped(sql: str, values: dict[str, Any], err: Exception, *, invalidated: bool = False) -> DBAPIError:
        return DBAPIError.instance(sql, values, err, psycopg.Error,
                                   connection_invalidated=invalidated)  # type: ignore[return-value]

    async def _run(self, sql: str, values: dict[str, Any]) -> list[tuple[Any, ...]]:
        connection = await self._acquire()
        try:
            cursor = await connection.execute(sql, values)
            rows = await cursor.fetchall()
        except psycopg.Error as err:
            if not (connection.broken or connection.closed):
                self._release(connection)
                raise self._wrapped(sql, values, err) from err
            # Like SQLAlchemy's invalidation: the idle ones are from before the failure too.
            self._drop(connection)
            for idle in self._idle:
                self._close(idle)
                self._mine.discard(idle)
            self._idle.clear()
            raise _Lost(err) from err
        except BaseException:
            self._drop(connection)  # cancelled mid-statement: its state is unknown
            raise
        self._release(connection)
        return rows

    async def _acquire(self) -> psycopg.AsyncConnection[Any]:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            self.dispose()
            self._loop = loop
        if self._idle:
            return self._idle.pop()
        if len(self._mine) + self._opening < self._size:
            return await self._connect()
        waiter: asyncio.Future[psycopg.AsyncConnection[Any] | None] = loop.create_future()
        self._waiters.append(waiter)
        try:
            handed = await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled() and waiter.result() is not None:
                self._release(waiter.result())  # type: ignore[arg-type]
            elif waiter.done() and not waiter.cancelled():
                self._wake()  # the room it was given goes to the next one
            raise
        return handed if handed is not None else await self._connect()

    async def _connect(self) -> psycopg.AsyncConnection[Any]:
        generation = self._generation
        self._opening += 1  # counts against the size while it connects
        try:
            connection = await psycopg.AsyncConnection.connect(*self._args, autocommit=True, **self._kwargs)
        except psycopg.Error as err:
            raise self._wrapped("connect", {}, err, invalidated=True) from err
        finally:
            self._opening -= 1
        if generation != self._generation:  # disposed meanwhile: not one of the new lot
            self._close(connection)
            return await self._acquire()
        self._mine.add(connection)
        return connection

    def _release(self, connection: psycopg.AsyncConnection[Any]) -> None:
        if connection not in self._mine:  # from a loop that is gone
            self._close(connection)
            return
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(connection)
                return
        self._idle.append(connection)

    def _drop(self, connection: psycopg.AsyncConnection[Any]) -> None:
        self._mine.discard(connection)
        self._close(connection)
        self._wake()

    def _wake(self) -> None:
        """Let the first waiter open a connection of its own (one was dropped)."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    @staticmethod
    def _close(connection: psycopg.AsyncConnection[Any]) -> None:
        # libpq's close needs no event loop (this may run after the loop ended).
        connection.pgconn.finish()

    def dispose(self) -> None:
        """Close the idle connections; those lent out are closed when they come back."""
        self._generation += 1
        self._loop = None
        for connection in self._idle:
            self._close(connection)
        self._idle.clear()
        self._mine.clear()
        for waiter in self._waiters:
            waiter.cancel()
        self._waiters.clear()
