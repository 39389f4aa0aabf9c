"""The attack: a guest floods its serial console, to fill the host's disk through its log or to
stall the platform.

The log must stay under its cap at every moment, not only once a trim came round: QEMU no
longer writes it (the agent reads the console and writes the log itself, node/console.py), so
a sampler that looks at its size every millisecond during the flood never sees it above the
cap. Meanwhile the platform answers, a console that reads sees the flood, one that never
reads holds nothing up, and afterwards the console still works and `vm logs` shows the flood.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from tests.conftest import Server, server_with_running_vm, wait_for

LOG_CAP = 1024 * 1024
FLOOD = "while :; do echo flood-flood-flood-flood-flood-flood-flood-flood; done"


@pytest.fixture(scope="module")
def flooded(tmp_path_factory: pytest.TempPathFactory, image_cache: Path) -> Iterator[Server]:
    with server_with_running_vm(tmp_path_factory, image_cache, "flood", "chatty",
                                extra_args=("--log-cap", "1M")) as srv:
        yield srv


class SizeSampler(threading.Thread):
    """The log's size every millisecond: the largest seen, and how often it shrank (a cut)."""

    def __init__(self, path: Path) -> None:
        super().__init__(daemon=True)
        self.path = path
        self.biggest = 0
        self.cuts = 0
        self.samples = 0
        self.done = threading.Event()

    def run(self) -> None:
        last = 0
        while not self.done.is_set():
            try:
                size = os.stat(self.path).st_size
            except FileNotFoundError:
                size = 0
            self.samples += 1
            self.biggest = max(self.biggest, size)
            if size < last:
                self.cuts += 1
            last = size
            time.sleep(0.001)


def console_url(server: Server, vm: str) -> str:
    return server.api().url.replace("http://", "ws://") + f"/api/v1/vms/{vm}/console"


@pytest.mark.timeout(600)
def test_a_guest_flooding_its_console_never_grows_the_log_past_its_cap(flooded: Server) -> None:
    api = flooded.api()
    headers = {"Authorization": f"Bearer {api.token}"}
    log = flooded.data_dir / "vms" / api.vm("chatty").id / "serial.log"
    sampler = SizeSampler(log)
    sampler.start()
    # One console that never reads (it must hold neither the log nor the guest up), and one
    # that reads everything.
    with connect(console_url(flooded, "chatty"), additional_headers=headers) as _idle, \
            connect(console_url(flooded, "chatty"), additional_headers=headers, max_size=None) as reader:
        seen = bytearray()
        stop_reading = threading.Event()

        def read_all() -> None:
            while not stop_reading.is_set():
                try:
                    seen.extend(reader.recv(timeout=0.5))
                except TimeoutError:
                    continue
                except ConnectionClosed:
                    return

        reading = threading.Thread(target=read_all, daemon=True)
        reading.start()
        api.exec("chatty", ["sh", "-c", f"({FLOOD}) >/dev/ttyS0 2>&1 </dev/null & echo $! >/tmp/flood.pid"])
        try:
            # Until the log was cut three times (1.5 caps at least went through it); the
            # platform answers all along.
            deadline = time.monotonic() + 400
            while sampler.cuts < 3 and time.monotonic() < deadline:
                assert api.vm("chatty").state == "running"
                assert api.host().hostname
                time.sleep(0.5)
            assert sampler.cuts >= 3, (sampler.cuts, sampler.biggest)
        finally:
            api.exec("chatty", ["sh", "-c", "kill $(cat /tmp/flood.pid)"])
        sampler.done.set()
        sampler.join()
        print(f"\nserial log: largest {sampler.biggest} bytes of a {LOG_CAP}-byte cap over "
              f"{sampler.samples} samples, {sampler.cuts} cuts; a reading console saw {len(seen)} bytes")
        assert sampler.biggest <= LOG_CAP, sampler.biggest
        assert b"flood-flood" in seen

        # The line still works both ways once the flood is over.
        reader.send(b"\necho after-$((6 * 7))\n")
        assert wait_for(lambda: b"after-42" in seen, timeout=60), bytes(seen[-300:])
        stop_reading.set()
        reading.join(timeout=5)

    data, _ = api.logs("chatty")
    assert b"flood-flood" in data and b"after-42" in data
    assert log.stat().st_size <= LOG_CAP
    assert api.exec("chatty", ["true"]).exit_code == 0
    assert "Traceback" not in flooded.log.read_text()
