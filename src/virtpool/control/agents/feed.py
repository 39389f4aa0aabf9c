"""Read each host's agent event feed from the cursor kept in its host row, and apply it.

One thread per host with an agent. The cursor (``hosts.event_cursor``) is written after each
event is applied, so a control plane that restarts asks for what came after the last event it
handled: an event is applied at least once, never lost. Applying is idempotent (see
control/vms/reconcile.py).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from virtpool.control.agents.registry import AgentRegistry
from virtpool.control.store.tables import HostRow
from virtpool.model.agent import AgentEvent
from virtpool.model.errors import VirtpoolError

log = logging.getLogger(__name__)

POLL_WAIT_S = 5.0  # one long poll of the agent's feed
RETRY_S = 2.0  # after the agent could not be reached

Apply = Callable[[str, AgentEvent], None]


class EventPump:
    """Follows the feeds of the hosts it is told to follow, until closed."""

    def __init__(self, sessions: sessionmaker[Session], agents: AgentRegistry, apply: Apply) -> None:
        self._sessions = sessions
        self._agents = agents
        self._apply = apply
        self._stop = threading.Event()
        self._threads: dict[str, threading.Thread] = {}
        self._lock = threading.Lock()

    def follow(self, host: str) -> None:
        """Start following ``host``'s feed (once; a second call does nothing)."""
        with self._lock:
            if host in self._threads and self._threads[host].is_alive():
                return
            thread = threading.Thread(target=self._run, args=(host,), name=f"events-{host}", daemon=True)
            self._threads[host] = thread
            thread.start()

    def cursor(self, host: str) -> int:
        with self._sessions() as session:
            return session.scalar(select(HostRow.event_cursor).where(HostRow.name == host)) or 0

    def _save(self, host: str, seq: int) -> None:
        with self._sessions.begin() as session:
            session.execute(update(HostRow).where(HostRow.name == host).values(event_cursor=seq)
                            .execution_options(synchronize_session=False))

    def _run(self, host: str) -> None:
        cursor = self.cursor(host)
        while not self._stop.is_set():
            try:
                events = self._agents.for_host(host).events(cursor, POLL_WAIT_S)
            except VirtpoolError as err:
                log.info("events of host %s unreadable for now: %s", host, err)
                self._stop.wait(RETRY_S)
                continue
            if events and events[0].seq > cursor + 1 and cursor:
                log.warning("host %s kept no events %d-%d; reconciling instead", host, cursor + 1,
                            events[0].seq - 1)
            for event in events:
                if self._stop.is_set():
                    return
                try:
                    self._apply(host, event)
                except Exception:  # one event that cannot be applied must not stop the feed
                    log.exception("agent event %s of host %s failed to apply", event.seq, host)
                cursor = event.seq
                self._save(host, cursor)

    def close(self) -> None:
        self._stop.set()
        with self._lock:
            threads = list(self._threads.values())
        for thread in threads:
            # Not for a whole long poll: a thread that wakes after this sees _stop and applies
            # nothing more (its events stay after the cursor, for the next start).
            thread.join(timeout=0.5)
