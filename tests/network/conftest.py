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


def next_prefix(base: str | None = None) -> str:
    """``base`` (the tests' own two letters) + one letter per xdist worker + one per server."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    letters = string.ascii_lowercase
    # Two letters of its own per test run on a shared machine (VIRTPOOL_TEST_NET_PREFIX), unless
    # the tests name their own.
    base = base or os.environ.get("VIRTPOOL_TEST_NET_PREFIX", "nw")[:2]
    return f"{base}{letters[int(worker or 0) % 26]}{letters[next(_servers) % 26]}"


def prefix_of(server: Server) -> str:
    args = list(server.extra_args)
    return args[args.index("--net-prefix") + 1]


@pytest.fixture(scope="module")
def net_server(tmp_path_factory: pytest.TempPathFactory, image_cache: Path) -> Iterator[Server]:
    yield from server_with_prefix(tmp_path_factory, image_cache, None, "netpool")


def server_with_prefix(tmp_path_factory: pytest.TempPathFactory, image_cache: Path,
                       base: str | None, name: str) -> Iterator[Server]:
    """A `virtpool up` whose devices and tables are named ``base`` (None: the run's) + two
    letters, removed (with its guard table) when the generator is closed."""
    prefix = next_prefix(base)
    srv = make_server(tmp_path_factory, image_cache, name, boot_timeout=150.0,
                      extra_args=("--net-prefix", prefix))
    yield srv
    srv.cleanup()
    assert qemu_pids(srv.data_dir) == [], "QEMU processes outlived their server's cleanup"
    # The host guard stays while VMs may run; once this server's VMs are gone, so does its table.
    subprocess.run(["nft", "delete", "table", "inet", f"{prefix}guard"], check=True)
