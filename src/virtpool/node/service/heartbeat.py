"""Heartbeats from this agent to its control plane, over mutual TLS.

The first heartbeat of a run acquires the host's lease (a new epoch) and reports the host's
inventory; later ones renew it with usage figures, as often as the reply says. Every reply
carries the pool's revoked certificate serials, which the agent then refuses. A control plane
out of reach is retried; the VMs keep running meanwhile.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import httpx
import psutil

from virtpool import __version__
from virtpool.model.agent import CONTRACT_VERSION
from virtpool.model.lease import DEFAULT_INTERVAL_S
from virtpool.node.agent import LocalAgent
from virtpool.node.service.app import Revocations
from virtpool.node.service.identity import Identity
from virtpool.mtls import client_context

log = logging.getLogger(__name__)
RETRY_S = 2.0  # after a heartbeat that got no answer
TIMEOUT_S = 10.0


class Heartbeat:
    def __init__(self, identity: Identity, agent: LocalAgent, address: str, revoked: Revocations,
                 on_refused: Callable[[str], None]) -> None:
        self._identity = identity
        self._agent = agent
        self._address = address
        self._revoked = revoked
        self._on_refused = on_refused
        self._epoch: int | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)
        self._client = httpx.Client(
            base_url=identity.server.rstrip("/"), timeout=TIMEOUT_S,
            verify=client_context(identity.ca, identity.cert, identity.key))

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=TIMEOUT_S + 1)
        self._client.close()

    def beat(self) -> float:
        """One heartbeat; returns how long to wait for the next."""
        body: dict[str, Any] = {"name": self._identity.name, "epoch": self._epoch,
                                "version": __version__, "contract": CONTRACT_VERSION,
                                "address": self._address}
        if self._epoch is None:
            body["host"] = self._agent.host_info().model_dump(mode="json")
        else:
            body["usage"] = self._usage()
        reply = self._client.post("/agent/v1/heartbeat", json=body)
        if reply.status_code == 409:  # another epoch was acquired since: acquire again
            self._epoch = None
            return 0.0
        if reply.status_code in (401, 403, 426):
            self._on_refused(_detail(reply))
            return RETRY_S
        reply.raise_for_status()
        answer = reply.json()
        self._epoch = int(answer["epoch"])
        self._revoked.update(list(answer.get("revoked", [])))
        return float(answer.get("interval_s", DEFAULT_INTERVAL_S))

    def _usage(self) -> dict[str, Any]:
        memory = psutil.virtual_memory()
        return {"running_vms": len(self._agent.running_vm_ids()),
                "memory_used_mib": (memory.total - memory.available) >> 20,
                "cpu_load_pct": psutil.cpu_percent(interval=None),
                "disk_free_mib": self._agent.host_info().disk_free_mib}

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                wait = self.beat()
            except (httpx.HTTPError, ValueError) as err:
                log.info("heartbeat to %s failed: %s", self._identity.server, err)
                wait = RETRY_S
            self._stop.wait(wait)


def _detail(reply: httpx.Response) -> str:
    try:
        return str(reply.json().get("detail"))
    except ValueError:
        return reply.text
