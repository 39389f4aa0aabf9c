"""Shared test fixtures: the default guest image (built once), and real `virtpool up` servers.

The image is built by the project's own builder into ``.cache/images`` (or
``$VIRTPOOL_TEST_IMAGES``) on first use and reused by every later run; each test's data dir
gets hard links to it, so no test can damage the shared copy's directory entries.
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil
import pytest

from virtpool.model.resources import MAX_RATIO
from virtpool.sdk import Client

REPO = Path(__file__).resolve().parent.parent
VIRTPOOL = str(Path(sys.executable).parent / "virtpool")


@pytest.fixture(scope="session")
def image_cache() -> Path:
    """The default image, built once per machine by the real builder."""
    from virtpool.node.images.build import build_default_image

    root = Path(os.environ.get("VIRTPOOL_TEST_IMAGES", REPO / ".cache" / "images"))
    root.mkdir(parents=True, exist_ok=True)
    build_default_image(root, "default")
    passable(root)
    return root


@pytest.fixture(scope="session")
def debian_image() -> Path:
    """The built-in debian-12 image, built once per machine (and again only when its recipe
    changes) by the real builder, into the same cache as the default image. The builder's own
    lock makes xdist workers that ask at once wait for one build."""
    from virtpool.node.images.debian import build_debian_image

    root = Path(os.environ.get("VIRTPOOL_TEST_IMAGES", REPO / ".cache" / "images"))
    root.mkdir(parents=True, exist_ok=True)
    build_debian_image(root)
    passable(root)
    return root


def link_image(cache: Path, data_dir: Path, name: str = "default") -> None:
    shutil.copytree(cache / name, data_dir / "images" / name, copy_function=os.link)


def qemu_pids(data_dir: Path, programs: tuple[str, ...] = ("qemu-system",)) -> list[int]:
    """QEMU processes (or other ``programs`` the agent runs) whose command line points into
    ``data_dir``."""
    found = []
    inside = str(data_dir).rstrip("/") + "/"  # not .../pool1 for .../pool10: a sibling's
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if (cmdline and any(p in cmdline[0] for p in programs)
                and any(inside in a or a + "/" == inside for a in cmdline)):
            found.append(proc.info["pid"])
    return found


@dataclass
class Server:
    """A real `virtpool up` process on its own data dir and port."""

    data_dir: Path
    boot_timeout: float = 60.0
    extra_args: tuple[str, ...] = ()
    command: str = "up"  # or "server": the control plane only
    proc: subprocess.Popen[bytes] | None = None
    client: Client | None = None
    log: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log = self.data_dir.parent / f"{self.data_dir.name}-server.log"

    @property
    def env(self) -> dict[str, str]:
        # A wide virtual terminal, so that Rich does not wrap what the tests read.
        return {**os.environ, "VIRTPOOL_DATA_DIR": str(self.data_dir), "COLUMNS": "250"}

    def start(self) -> Server:
        url_file = self.data_dir / "api.url"
        url_file.unlink(missing_ok=True)
        with self.log.open("ab") as log:
            up_only = ("--no-build", "--boot-timeout", str(self.boot_timeout)) if self.command == "up" else ()
            self.proc = subprocess.Popen(
                [VIRTPOOL, self.command, "--data-dir", str(self.data_dir), "--listen", "127.0.0.1:0",
                 *up_only, *self.extra_args],
                stdout=log, stderr=subprocess.STDOUT, env=self.env,
            )
        # Generous: a loaded shared machine has taken over 30 s to migrate and start.
        deadline = time.monotonic() + 90
        while not url_file.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                # A server that is merely slow would start later and outlive the test run.
                self.proc.kill()
                self.proc.wait(timeout=30)
                raise RuntimeError(f"virtpool {self.command} did not start: {self.log.read_text()}")
            time.sleep(0.05)
        token = (self.data_dir / "admin.token").read_text().strip()
        self.client = Client(url_file.read_text().strip(), token, timeout=120)
        return self

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=30)
        if self.client is not None:
            self.client.close()
        self.proc = None

    def cli(self, *args: str, input: bytes | None = None, timeout: float = 240,
            token: str | None = None, env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """Run the `virtpool` command against this server, as a user would (with ``token``
        instead of the admin token when given, and ``env_extra`` in its environment)."""
        env = {**self.env, "VIRTPOOL_TOKEN": token} if token else dict(self.env)
        env.update(env_extra or {})
        # No input: /dev/null, as from a cron job (never the test runner's own stdin, which
        # `vm exec` would read and send to the guest).
        return subprocess.run(
            [VIRTPOOL, *args], env=env, capture_output=True, text=True, timeout=timeout,
            input=input.decode() if input is not None else None,
            stdin=subprocess.DEVNULL if input is None else None,
        )

    def api(self) -> Client:
        assert self.client is not None, "server not started"
        return self.client

    def cleanup(self) -> None:
        """Force-delete every VM, stop the server, and kill any QEMU or passt that survived (a
        server that died cannot stop them, and they would outlive the run)."""
        if self.client is not None and self.proc is not None:
            for vm in self.client.vms(all_projects=True):
                with Client(self.client.url, self.client.token, project=vm.project) as in_project:
                    in_project.delete_vm(vm.id, force=True)
        self.stop()
        for pid in qemu_pids(self.data_dir, ("qemu-system", "passt")):
            os.kill(pid, signal.SIGKILL)


def passable(directory: Path) -> None:
    """Let VM users (QEMU runs as one per VM under root) pass through ``directory`` and its
    parents: pytest makes its temp dirs 0700."""
    for path in [directory, *directory.parents]:
        mode = path.stat().st_mode
        if not mode & 0o001:
            path.chmod(mode | 0o011)


def make_server(tmp_path_factory: pytest.TempPathFactory, cache: Path | None, name: str,
                boot_timeout: float = 60.0, extra_args: tuple[str, ...] = (),
                db_url: str | None = None, command: str = "up",
                images: tuple[str, ...] = ("default",)) -> Server:
    """Start a server on a fresh data dir: with ``images`` of ``cache`` linked in (none when
    ``cache`` is None) and on the database ``db_url`` (default: SQLite in the data dir)."""
    data_dir = tmp_path_factory.mktemp(name)
    passable(data_dir)
    (data_dir / "images").mkdir()
    if cache is not None:
        for image in images:
            link_image(cache, data_dir, image)
    if db_url is not None:
        extra_args = (*extra_args, "--db", db_url)
    server = Server(data_dir, boot_timeout=boot_timeout, extra_args=extra_args, command=command).start()
    if command == "up":
        # Functional tests keep dozens of stopped VMs on one small machine, each holding its
        # vCPUs on the host; the highest CPU ratio keeps them from running into the scheduler's
        # limits, which tests/vm/test_scheduling.py tests on hosts of its own.
        api = server.api()
        api.set_host_ratios(api.host().hostname, cpu=MAX_RATIO)
    return server


@contextmanager
def server_with_running_vm(tmp_path_factory: pytest.TempPathFactory, cache: Path, name: str,
                           vm: str, extra_args: tuple[str, ...] = ()) -> Iterator[Server]:
    """A server (as ``make_server``) with one VM ``vm`` booted and running. Its cleanup runs
    even when the boot fails, and leaves no QEMU of the server behind."""
    srv = make_server(tmp_path_factory, cache, name, boot_timeout=240.0, extra_args=extra_args)
    try:
        srv.api().create_vm(vm, start=True)
        booted = srv.api().wait_vm(vm)
        assert booted.state == "running", booted.error
        yield srv
    finally:
        srv.cleanup()
    assert qemu_pids(srv.data_dir) == [], "QEMU outlived its server's cleanup"


class JoinedAgent:
    """A real `virtpool agent` process joined to ``server`` (its own data dir, HTTPS on
    loopback, mutual TLS with the pool CA); ``stop()`` ends it and its process group."""

    def __init__(self, server: Server, data: Path, name: str, net_prefix: str) -> None:
        token = server.api().join_token(600)["token"]
        join = (server.data_dir / "join.url").read_text().strip()
        self.log_path = data.parent / f"{name}-agent.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [VIRTPOOL, "agent", "--server", join, "--join", token, "--data-dir", str(data),
             "--listen", "127.0.0.1:0", "--name", name, "--net-prefix", net_prefix],
            stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        self.address = None
        deadline = time.monotonic() + 60
        while self.address is None and time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"virtpool agent exited: {self.log_path.read_text()}")
            view = next((h for h in server.api().hosts() if h.name == name), None)
            # Joined once it is up with its capacity (a create placed before that finds none).
            joined = view is not None and view.state == "up" and view.memory_mib.physical > 0
            self.address = view.address if joined else None
            time.sleep(0.2)
        if self.address is None:
            self.stop()
            raise RuntimeError(f"virtpool agent did not join: {self.log_path.read_text()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=90)  # it detaches its VMs first; slow on a loaded machine
        self._log.close()


@pytest.fixture(scope="session")
def postgres() -> Iterator[str]:
    """One throwaway PostgreSQL server for the session; tests make their own databases in it."""
    from tests.postgres import postgres_server

    with postgres_server() as url:
        yield url


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, image_cache: Path) -> Iterator[Server]:
    """One `virtpool up` shared by the tests of a module."""
    srv = make_server(tmp_path_factory, image_cache, "pool", boot_timeout=60.0)
    yield srv
    srv.cleanup()
    assert qemu_pids(srv.data_dir) == [], "QEMU processes outlived their server's cleanup"


def read_until(fd: int, needle: bytes, timeout: float) -> bytes:
    """Read a terminal (``fd``, a pty's main side) until ``needle`` shows or ``timeout`` passes."""
    seen = b""
    deadline = time.monotonic() + timeout
    while needle not in seen and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                seen += os.read(fd, 4096)
            except OSError:
                break
    return seen


def served_through_forward(api: Client, vm: str, host_port: int, text: str,
                           timeout: float = 60.0) -> str | None:
    """Serve ``text`` from an httpd in the guest on port 8080 and fetch it through the VM's
    forward on ``host_port``; what came back (retried until ``timeout``), or None."""
    api.exec(vm, ["sh", "-c", f"mkdir -p /www && echo {text} > /www/index.html && httpd -p 8080 -h /www"])

    def fetch() -> str | None:
        try:
            return httpx.get(f"http://127.0.0.1:{host_port}/index.html", timeout=2).text
        except httpx.HTTPError:
            return None

    return wait_for(fetch, timeout=timeout)


def wait_for(predicate, timeout: float = 10.0, interval: float = 0.05):  # type: ignore[no-untyped-def]
    """Retry ``predicate`` until it returns something truthy; return that, or the last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)
