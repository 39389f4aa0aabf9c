"""Fixtures of the network tests: a `virtpool up` whose host devices and nftables tables carry
a prefix of their own (``nw`` + one letter per xdist worker + one per server), so that servers
of parallel workers, and other test runs on the same machine, never touch each other's."""

from __future__ import annotations

import itertools
import os
import string
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Server, make_server, qemu_pids

_servers = itertools.count()


def next_prefix() -> str:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    letters = string.ascii_lowercase
    # Two letters of its own per test run on a shared machine (VIRTPOOL_TEST_NET_PREFIX).
    base = os.environ.get("VIRTPOOL_TEST_NET_PREFIX", "nw")[:2]
    return f"{base}{letters[int(worker or 0) % 26]}{letters[next(_servers) % 26]}"


def prefix_of(server: Server) -> str:
    args = list(server.extra_args)
    return args[args.index("--net-prefix") + 1]


@pytest.fixture(scope="module")
def net_server(tmp_path_factory: pytest.TempPathFactory, image_cache: Path) -> Iterator[Server]:
    prefix = next_prefix()
    srv = make_server(tmp_path_factory, image_cache, "netpool", boot_timeout=150.0,
                      extra_args=("--net-prefix", prefix))
    yield srv
    srv.cleanup()
    assert qemu_pids(srv.data_dir) == [], "QEMU processes outlived their server's cleanup"
    # The host guard stays while VMs may run; once this server's VMs are gone, so does its table.
    subprocess.run(["nft", "delete", "table", "inet", f"{prefix}guard"], check=True)
