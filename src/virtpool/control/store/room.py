"""Room kept inside an SQLite database's own files, so that it can still be written when the
disk under it is full.

A full data disk (guests, uploads, logs took the last block) must not stop the platform from
recording a stop, a delete, a new token. SQLite in WAL mode needs room for two things: frames
appended to the WAL, and pages the database file grows by at a checkpoint. Both reuse space
already allocated: a WAL is rewritten from its start after a checkpoint without shrinking, and
the database file takes new pages from its freelist before it grows. So at start-up the store
writes ``ROOM_BYTES`` into a scratch table, checkpoints it (real blocks in the database file,
the same again in the WAL), and drops the table: its pages stay in the freelist. No guest can
take that room (it is inside root's files), unlike free space on the disk.

It is refilled at each start when less than half of it is left; on a disk already full it is
skipped (the platform still starts).
"""

from __future__ import annotations

import logging

from sqlalchemy import Engine, text
from sqlalchemy.exc import OperationalError

log = logging.getLogger(__name__)

ROOM_BYTES = 8 * 1024 * 1024
SCRATCH = "_virtpool_room"  # created and dropped here; never part of the schema


def keep_room(engine: Engine, size: int = ROOM_BYTES) -> int:
    """Make sure the database's freelist holds about ``size`` bytes; the bytes it holds."""
    with engine.connect() as conn:
        page = conn.exec_driver_sql("PRAGMA page_size").scalar_one()
        free = conn.exec_driver_sql("PRAGMA freelist_count").scalar_one() * page
    if free >= size // 2:
        return free
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql(f"CREATE TABLE IF NOT EXISTS {SCRATCH} (room BLOB)")
            conn.execute(text(f"INSERT INTO {SCRATCH} VALUES (zeroblob(:n))"), {"n": size})
        with engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)")
    except OperationalError as err:
        log.warning("no room kept in the database (%s): it may refuse writes when its disk fills", err.orig)
    finally:
        with engine.begin() as conn:
            conn.exec_driver_sql(f"DROP TABLE IF EXISTS {SCRATCH}")
    with engine.connect() as conn:
        return conn.exec_driver_sql("PRAGMA freelist_count").scalar_one() * page
