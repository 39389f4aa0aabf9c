"""The serial console: interactive through `virtpool vm console` on a terminal, and its log's cap."""

from __future__ import annotations

import os
import pty
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import VIRTPOOL, Server, make_server, read_until, wait_for

LOG_CAP = 1024 * 1024


@pytest.fixture(scope="module")
def capped(tmp_path_factory: pytest.TempPathFactory, image_cache: Path) -> Iterator[Server]:
    srv = make_server(tmp_path_factory, image_cache, "capped", extra_args=("--log-cap", "1M"))
    srv.api().create_vm("chatty", start=True)
    assert srv.api().wait_vm("chatty").state == "running"
    yield srv
    srv.cleanup()


def test_console_command_on_a_terminal_runs_commands_and_detaches_with_ctrl_bracket(capped: Server) -> None:
    main, secondary = pty.openpty()
    proc = subprocess.Popen([VIRTPOOL, "vm", "console", "chatty"], stdin=secondary, stdout=secondary,
                            stderr=secondary, env=capped.env, start_new_session=True)
    os.close(secondary)
    try:
        assert b"Ctrl-]" in read_until(main, b"Ctrl-]", 15)
        os.write(main, b"echo $((6 * 7))-from-console\r")
        assert b"42-from-console" in read_until(main, b"42-from-console", 15)
        os.write(main, b"\x1d")
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(main)
    # Detaching left the VM running.
    assert capped.api().vm("chatty").state == "running"


def test_a_guest_flooding_its_console_cannot_grow_the_log_beyond_its_cap(capped: Server) -> None:
    api = capped.api()
    log = capped.data_dir / "vms" / api.vm("chatty").id / "serial.log"
    api.exec("chatty", ["sh", "-c", "while :; do echo flood-flood-flood-flood-flood-flood; done "
                                    ">/dev/ttyS0 2>&1 </dev/null & echo $! >/tmp/flood.pid"])
    assert wait_for(lambda: log.stat().st_size > LOG_CAP // 2, timeout=30), "the flood never reached the log"
    biggest = 0
    deadline = time.monotonic() + 8
    while time.monotonic() < deadline:
        biggest = max(biggest, log.stat().st_size)
        time.sleep(0.05)
    api.exec("chatty", ["sh", "-c", "kill $(cat /tmp/flood.pid)"])
    # Trimmed once a second: the log may exceed the cap by what one second of flooding writes,
    # never grow without bound.
    assert biggest <= LOG_CAP * 1.5, biggest
    data, _ = api.logs("chatty")
    assert b"flood-flood" in data
