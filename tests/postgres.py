"""A throwaway PostgreSQL server for tests: its own cluster in a temporary dir, on a free port.

The cluster runs as the ``postgres`` system user (the server refuses to run as root) with trust
authentication on 127.0.0.1 only, and is removed when the tests end. ``scripts/install-system-
packages.sh --test`` installs the server; in CI a missing server is an error, never a skip.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class PostgresUnavailable(RuntimeError):
    pass


def _bindir() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    if not found:
        raise PostgresUnavailable(
            "no PostgreSQL server installed; run scripts/install-system-packages.sh --test")
    return Path(found[-1]).parent


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


_CLUSTERS: dict[str, Path] = {}  # server URL -> its data dir, while it runs


def _as_postgres(argv: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else argv


@contextmanager
def postgres_server(also_listen: str | None = None, trust_network: str | None = None) -> Iterator[str]:
    """Start a fresh cluster; yield its SQLAlchemy URL; stop and delete it afterwards.

    ``also_listen`` is a further address to listen on (tests/cluster's bridge, which the
    network namespaces reach it through), ``trust_network`` the CIDR allowed in from there.
    """
    bindir = _bindir()
    root = Path(tempfile.mkdtemp(prefix="virtpool-pg-"))
    data = root / "data"
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    port = _free_port()
    subprocess.run(
        _as_postgres([str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
                      "--no-sync", "-E", "UTF8"]),
        check=True, capture_output=True)
    if trust_network is not None:
        with (data / "pg_hba.conf").open("a") as hba:
            hba.write(f"host all all {trust_network} trust\n")
    addresses = "127.0.0.1" + (f",{also_listen}" if also_listen else "")
    started = False
    url = f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    try:
        subprocess.run(
            _as_postgres([str(bindir / "pg_ctl"), "-D", str(data), "-w", "-l", str(root / "log"),
                          "-o", f"-h {addresses} -p {port} -k {root} -c fsync=off "
                                "-c max_connections=300", "start"]),
            check=True, capture_output=True)
        started = True
        _wait_ready(port)
        _CLUSTERS[url] = data
        yield url
    finally:
        _CLUSTERS.pop(url, None)
        if started:
            subprocess.run(_as_postgres([str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate",
                                         "stop"]), capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def restart_postgres(server_url: str) -> None:
    """Restart the server that :func:`postgres_server` yielded ``server_url`` for, as an
    operator's ``pg_ctl restart`` does: every client connection is cut, the data stays."""
    data = _CLUSTERS[server_url.rsplit("/", 1)[0] + "/postgres"]
    subprocess.run(_as_postgres([str(_bindir() / "pg_ctl"), "-D", str(data), "-w", "-l",
                                 str(data.parent / "log"), "-m", "fast", "restart"]), check=True, capture_output=True)
    _wait_ready(int(server_url.rsplit(":", 1)[1].split("/")[0]))


def _wait_ready(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise PostgresUnavailable(f"PostgreSQL did not listen on port {port} within {timeout:.0f} s")


def create_database(server_url: str, name: str) -> str:
    """Create database ``name`` on the server at ``server_url``; return its SQLAlchemy URL."""
    import psycopg

    dsn = server_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return server_url.rsplit("/", 1)[0] + f"/{name}"
