"""What the benchmarks share: a real `virtpool up` on a scratch data dir, its image, clean-up.

Imported by the scripts in this directory (which Python puts on the path when it runs one).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

from virtpool.sdk import APIError, Client

VIRTPOOL = str(Path(sys.executable).parent / "virtpool")
IMAGE = "default"


class BenchError(Exception):
    """Something failed to boot, to run or to set up: the benchmark has no valid figure."""


def note(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:  # another filesystem
        shutil.copy2(src, dst)


def link_image(cache: Path, data_dir: Path) -> None:
    """The default image from ``cache`` into ``data_dir`` (hard links where possible)."""
    (data_dir / "images").mkdir(parents=True, exist_ok=True)
    shutil.copytree(cache / IMAGE, data_dir / "images" / IMAGE, copy_function=_link_or_copy)


def kill_qemus_under(root: Path) -> None:
    """SIGKILL any QEMU whose command line points into ``root`` (one a run left behind)."""
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if cmdline and "qemu-system" in cmdline[0] and any(str(root) in a for a in cmdline):
            try:
                proc.send_signal(signal.SIGKILL)
            except psutil.NoSuchProcess:
                pass


class Server:
    """A real `virtpool up` on its own data dir (made and given its image by the caller) and a
    free port, and a client for it."""

    def __init__(self, data_dir: Path, boot_timeout: float, extra_args: tuple[str, ...] = (),
                 ca: Path | None = None) -> None:
        self.data_dir = data_dir
        self.extra_args = extra_args
        self.ca = ca  # what the server's certificate is checked with, when it serves HTTPS
        self.boot_timeout = boot_timeout
        self.log = data_dir.parent / "server.log"
        self.env = {**os.environ, "VIRTPOOL_DATA_DIR": str(data_dir)}
        for var in ("VIRTPOOL_URL", "VIRTPOOL_TOKEN"):  # they would point the CLI elsewhere
            self.env.pop(var, None)
        self.proc: subprocess.Popen[bytes] | None = None
        self.client: Client | None = None

    def start(self) -> Client:
        url_file = self.data_dir / "api.url"
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [VIRTPOOL, "up", "--data-dir", str(self.data_dir), "--listen", "127.0.0.1:0",
                 "--no-build", "--boot-timeout", str(self.boot_timeout), *self.extra_args],
                stdout=log, stderr=subprocess.STDOUT, env=self.env,
            )
        deadline = time.monotonic() + 60
        while not url_file.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise BenchError(f"virtpool up did not start:\n{self.log.read_text()}")
            time.sleep(0.05)
        token = (self.data_dir / "admin.token").read_text().strip()
        self.client = Client(url_file.read_text().strip(), token, timeout=self.boot_timeout, ca=self.ca)
        # api.url is written just before the server listens: wait until it answers.
        while True:
            try:
                self.client.host()
                return self.client
            except APIError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise BenchError(f"virtpool up does not answer:\n{self.log.read_text()}") from None
                time.sleep(0.05)

    def qemu_pid(self, vm_id: str) -> int:
        try:
            pid = int((self.data_dir / "vms" / vm_id / "qemu.pid").read_text().strip())
        except (OSError, ValueError) as err:
            raise BenchError(f"no QEMU pid for VM {vm_id}: {err}") from None
        if not psutil.pid_exists(pid):
            raise BenchError(f"the QEMU of VM {vm_id} (pid {pid}) is gone")
        return pid

    def stop(self) -> None:
        if self.client is not None and self.proc is not None and self.proc.poll() is None:
            try:
                for vm in self.client.vms():
                    self.client.delete_vm(vm.name, force=True)
            except APIError as err:  # keep cleaning up
                note(f"warning: could not delete the benchmark's VMs: {err}")
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.client is not None:
            self.client.close()
        self.proc = None
