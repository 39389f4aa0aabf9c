"""The serial console: interactive through `virtpool vm console` on a terminal (its log's cap
under a flood: tests/security/test_console_flood.py)."""

from __future__ import annotations

import os
import pty
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import VIRTPOOL, Server, read_until, server_with_running_vm


@pytest.fixture(scope="module")
def capped(tmp_path_factory: pytest.TempPathFactory, image_cache: Path) -> Iterator[Server]:
    with server_with_running_vm(tmp_path_factory, image_cache, "capped", "chatty",
                                extra_args=("--log-cap", "1M")) as srv:
        yield srv


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
