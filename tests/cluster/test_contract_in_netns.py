"""The agent contract suite (tests/contract) run once more, against a standalone `virtpool agent`
in its own network namespace, reached across the lab's bridge by the control plane's client
certificate: the same cases as for the in-process agent and the loopback one."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster.conftest import Cluster
from tests.cluster.harness import HOST_NAMES
from tests.contract.test_agent_contract import (  # noqa: F401 - collected here, with this module's agent
    test_a_vm_boots_answers_and_its_exit_is_in_the_event_feed,
    test_disks_and_destroy_are_idempotent,
    test_host_info_is_typed,
    test_images,
)
from virtpool.control.agents.remote import RemoteAgent
from virtpool.model.agent import Agent

H1 = HOST_NAMES[0]  # it has the default image from the start


@pytest.fixture(scope="module")
def agent(cluster: Cluster) -> Iterator[tuple[Agent, Path]]:
    """h1's agent, as the control plane reaches it over the bridge."""
    with cluster.api() as api:
        address = api.inventory_host(H1).address
    host = cluster.node(H1).host
    assert host is not None and address and f"{host.address}:" in address, address  # its namespace's
    pki = cluster.control.data_dir / "pki"
    remote = RemoteAgent(H1, address, ca=pki / "ca.crt", cert=pki / "control.crt",
                         key=pki / "control.key", revoked=frozenset)
    yield remote, cluster.node(H1).data_dir
    remote.close()
