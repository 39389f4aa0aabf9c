"""Pool-wide settings kept in the database, so that every server sharing it agrees."""

from __future__ import annotations

import threading
import time

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from virtpool.control.store.tables import SettingRow
from virtpool.model.inventory import PoolSettings

# A change made through another server is seen within this long; this one sees it at once.
CACHE_S = 5.0


class SettingsService:
    """Read (cached briefly: placement asks on every VM create) and change pool settings."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self._sessions = sessions
        self._lock = threading.Lock()
        self._cached: tuple[float, PoolSettings] | None = None

    def get(self) -> PoolSettings:
        with self._lock:
            if self._cached is not None and time.monotonic() - self._cached[0] < CACHE_S:
                return self._cached[1]
        with self._sessions() as session:
            stored = {row.key: row.value for row in session.scalars(select(SettingRow))}
        settings = PoolSettings.model_validate(stored)
        with self._lock:
            self._cached = (time.monotonic(), settings)
        return settings

    def update(self, settings: PoolSettings) -> PoolSettings:
        with self._sessions.begin() as session:
            for key, value in settings.model_dump(mode="json").items():
                session.merge(SettingRow(key=key, value=value))
        with self._lock:
            self._cached = None
        return self.get()

    def weigher(self) -> str:
        """The pool's default weigher, for the placer."""
        return self.get().weigher
