"""Fixtures of the network tests: a `virtpool up` whose host devices and nftables tables carry
the prefix ``nw``, so that they never collide with other test runs on the same machine."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Server, make_server, qemu_pids

NET_PREFIX = "nw"


@pytest.fixture(scope="module")
def net_server(tmp_path_factory: pytest.TempPathFactory, image_cache: Path) -> Iterator[Server]:
    srv = make_server(tmp_path_factory, image_cache, "netpool", boot_timeout=90.0,
                      extra_args=("--net-prefix", NET_PREFIX))
    yield srv
    srv.cleanup()
    assert qemu_pids(srv.data_dir) == [], "QEMU processes outlived their server's cleanup"
