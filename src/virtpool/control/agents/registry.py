"""Which agent drives which host: the one place the control plane turns a host name into an
``Agent``.

The host this process runs on (``virtpool up``) has its in-process agent; every other host
that has joined has a ``RemoteAgent`` built from its row (where its agent answers) and the
control plane's own client certificate. A host with neither is a record without an agent:
asking for it raises ``NoAgentAttached`` naming the host.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from virtpool.control.detached import NoAgentAttached
from virtpool.control.store.tables import HostRow
from virtpool.model.agent import Agent

# (host name, agent URL) -> a remote agent; given by the composition root (control/pool.py).
RemoteFactory = Callable[[str, str], Agent]


class AgentRegistry:
    """Host name -> agent, cached; ``forget`` drops a host (removed, or its URL changed)."""

    def __init__(self, sessions: sessionmaker[Session], local_name: str, local: Agent | None,
                 remote: RemoteFactory | None = None) -> None:
        self._sessions = sessions
        self.local_name = local_name
        self.local = local
        self._remote = remote
        self._agents: dict[str, tuple[str, Agent]] = {}
        self._lock = threading.Lock()

    def for_host(self, name: str) -> Agent:
        """The agent of host ``name``; raises NoAgentAttached when it has none."""
        if name == self.local_name and self.local is not None:
            return self.local
        with self._sessions() as session:
            url = session.scalar(select(HostRow.address).where(HostRow.name == name))
        if url is None or self._remote is None:
            raise NoAgentAttached(
                f"host '{name}' has no agent attached",
                hint="start `virtpool agent --server URL --join TOKEN` on it (a token from "
                     "`virtpool host join-token`), or place the VM on another host")
        with self._lock:
            known = self._agents.get(name)
            if known is not None and known[0] == url:
                return known[1]
            agent = self._remote(name, url)
            self._agents[name] = (url, agent)
        if known is not None:
            known[1].close()
        return agent

    def attached(self) -> list[str]:
        """Names of the hosts that have an agent (in process or joined)."""
        with self._sessions() as session:
            names = list(session.scalars(select(HostRow.name).where(HostRow.address.is_not(None))))
        if self.local is not None:
            names = [self.local_name, *(n for n in names if n != self.local_name)]
        return names

    def forget(self, name: str) -> None:
        with self._lock:
            known = self._agents.pop(name, None)
        if known is not None:
            known[1].close()

    def close(self) -> None:
        with self._lock:
            agents = [a for _, a in self._agents.values()]
            self._agents.clear()
        for agent in agents:
            agent.close()
        if self.local is not None:
            self.local.close()
