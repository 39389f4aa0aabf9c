"""The hole of issue 11, item 0, tried from inside a real guest: a VM on the default network
must not reach any service of the host, on loopback or on the host's own addresses, while its
`--port` forwards keep working."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from urllib.parse import urlsplit

import httpx
import psutil
import pytest

from tests.conftest import Server, served_through_forward, wait_for

SECRET = "host-secret"


def host_addresses() -> list[str]:
    """Every IPv4 address of this host, loopback included."""
    found = []
    for addrs in psutil.net_if_addrs().values():
        found += [a.address for a in addrs if a.family == socket.AF_INET]
    return found


@pytest.fixture
def host_services() -> Iterator[dict[str, int]]:
    """A service on each host address (port chosen by the kernel) that answers SECRET."""
    listeners: dict[str, socket.socket] = {}
    for address in host_addresses():
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((address, 0))
        sock.listen(16)
        listeners[address] = sock
    stop = threading.Event()

    def serve(sock: socket.socket) -> None:
        sock.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = sock.accept()
            except OSError:
                continue
            with conn:
                conn.sendall(SECRET.encode() + b"\n")

    threads = [threading.Thread(target=serve, args=(s,), daemon=True) for s in listeners.values()]
    for thread in threads:
        thread.start()
    yield {address: sock.getsockname()[1] for address, sock in listeners.items()}
    stop.set()
    for thread in threads:
        thread.join()
    for sock in listeners.values():
        sock.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_a_guest_reaches_no_host_service_but_its_port_forward_works(
        net_server: Server, host_services: dict[str, int]) -> None:
    api = net_server.api()
    api_port = urlsplit(api.url).port
    forwarded = free_port()
    api.create_vm("probe", ports=[f"{forwarded}:8080"], start=True)
    assert api.wait_vm("probe").state == "running"

    # The host side: every service is up and answers from the host itself.
    for address, port in host_services.items():
        with socket.create_connection((address, port), timeout=5) as conn:
            assert conn.recv(64).startswith(SECRET.encode())
    assert httpx.get(f"{api.url}/docs", timeout=5).status_code == 200

    # The forward still reaches a server in the guest.
    assert served_through_forward(api, "probe", forwarded, "from-guest") == "from-guest\n"

    # The guest side: QEMU's old loophole (10.0.2.2 = the host's loopback) and every address of
    # the host, on the API's port and on the services above.
    # Each probe sends an HTTP request: the API would answer "HTTP/", the others SECRET.
    external = [a for a in host_services if not a.startswith("127.")]
    targets = [("10.0.2.2", api_port), *(("10.0.2.2", p) for p in host_services.values()),
               *((a, host_services[a]) for a in external), *((a, api_port) for a in external)]
    for address, port in targets:
        probe = api.exec("probe", ["sh", "-c", "printf 'GET /docs HTTP/1.0\\r\\n\\r\\n' | "
                                   f"nc -w 3 {address} {port}; echo rc=$?"], timeout=90)
        assert "rc=" in probe.stdout, probe
        assert SECRET not in probe.stdout and "HTTP/" not in probe.stdout, \
            f"the guest reached {address}:{port}: {probe.stdout!r}"
    api.delete_vm("probe", force=True)


def test_no_passt_outlives_its_vm(net_server: Server) -> None:
    api = net_server.api()
    api.create_vm("brief", start=True)
    assert api.wait_vm("brief").state == "running"
    run_dir = net_server.data_dir / "vms" / api.vm("brief").id
    pid = int((run_dir / "passt.pid").read_text())
    assert psutil.pid_exists(pid)
    api.delete_vm("brief", force=True)
    assert wait_for(lambda: not psutil.pid_exists(pid) or
                    psutil.Process(pid).status() == psutil.STATUS_ZOMBIE, timeout=10)
