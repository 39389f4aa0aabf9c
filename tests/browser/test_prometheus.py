"""/metrics scraped by a real Prometheus (Debian's), with a metrics token in a credentials file,
and read back with PromQL: a running VM's CPU counter, VM counts by state, host allocation."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.browser.conftest import BOOT_TIMEOUT_S
from tests.conftest import Server, wait_for

pytestmark = pytest.mark.vm

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def prometheus(pool: Server, tmp_path: Path) -> Iterator[str]:
    """Prometheus scraping ``pool`` every 2 s with a pool-wide metrics token."""
    if not os.path.exists(PROMETHEUS):
        pytest.fail(f"{PROMETHEUS} is missing: run scripts/install-system-packages.sh --test")
    token = pool.api().create_token("db-scraper", "metrics", pool_wide=True).token
    token_file = tmp_path / "token"
    token_file.write_text(token)
    token_file.chmod(0o600)
    target = pool.api().url.removeprefix("http://")
    (tmp_path / "prometheus.yml").write_text(f"""
global:
  scrape_interval: 2s
  scrape_timeout: 2s
  evaluation_interval: 2s
scrape_configs:
  - job_name: virtpool
    metrics_path: /metrics
    authorization:
      type: Bearer
      credentials_file: {token_file}
    static_configs:
      - targets: ["{target}"]
""")
    port = free_port()
    log = (tmp_path / "prometheus.log").open("wb")
    proc = subprocess.Popen([PROMETHEUS, f"--config.file={tmp_path / 'prometheus.yml'}",
                             f"--storage.tsdb.path={tmp_path / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
                            stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        ready = wait_for(lambda: _ready(url), timeout=60, interval=0.5)
        assert ready, (tmp_path / "prometheus.log").read_text()
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()
    assert proc.poll() is not None


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/-/ready", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def query(url: str, promql: str) -> list[dict[str, Any]]:
    answer = httpx.get(f"{url}/api/v1/query", params={"query": promql}, timeout=10).json()
    assert answer["status"] == "success", answer
    return answer["data"]["result"]


def test_prometheus_scrapes_a_running_vms_cpu_counter(pool: Server, prometheus: str) -> None:
    api = pool.api()
    op = api.create_vm("dbprom", start=True)
    api.wait_operation(op, timeout=BOOT_TIMEOUT_S + 30)
    assert api.vm("dbprom").state == "running", api.vm("dbprom").error
    series = wait_for(lambda: query(prometheus, 'virtpool_vm_cpu_seconds_total{vm="dbprom"}'), timeout=60, interval=1)
    assert len(series) == 1, series
    assert series[0]["metric"]["project"] == "default"
    assert float(series[0]["value"][1]) > 0  # a booted guest has used CPU time
    # The target is up with the metrics token, and the rest of the pool is there too (a scrape
    # taken while the VM was still starting may be the latest for a moment).
    assert [s["value"][1] for s in query(prometheus, 'up{job="virtpool"}')] == ["1"]
    running = wait_for(lambda: query(prometheus, 'virtpool_vms{state="running",project="default"} == 1'),
                       timeout=30, interval=1)
    assert len(running) == 1, query(prometheus, 'virtpool_vms{project="default"}')
    allocated = query(prometheus, 'virtpool_host_allocated{resource="memory"}')
    assert float(allocated[0]["value"][1]) >= 256 * 1024 * 1024
    assert query(prometheus, "virtpool_api_request_duration_seconds_count") != []
    assert query(prometheus, "virtpool_placement_duration_seconds_count > 0") != []

    # Network counters: traffic the guest sends (20 pings of 1000 bytes) raises its transmit
    # counter as Prometheus scraped it, labelled by vm, project and host only.
    sent = 'virtpool_vm_network_transmit_bytes_total{vm="dbprom"}'
    first = wait_for(lambda: query(prometheus, sent), timeout=60, interval=1)
    assert len(first) == 1, first
    assert set(first[0]["metric"]) == {"__name__", "vm", "project", "host", "job", "instance"}
    before = float(first[0]["value"][1])
    api.exec("dbprom", ["ping", "-c", "20", "-i", "0.05", "-W", "1", "-s", "1000", "10.0.2.2"], timeout=60)
    risen = wait_for(lambda: query(prometheus, f"{sent} >= {before + 20_000}"), timeout=60, interval=1)
    assert risen, query(prometheus, sent)
    for name in ("receive_bytes", "receive_packets", "transmit_packets"):
        assert query(prometheus, f'virtpool_vm_network_{name}_total{{vm="dbprom"}}') != [], name
    api.delete_vm("dbprom", force=True)


def test_metrics_token_reads_metrics_and_nothing_else(pool: Server) -> None:
    api = pool.api()
    token = api.create_token("db-metrics-only", "metrics", pool_wide=True).token
    headers = {"Authorization": f"Bearer {token}"}
    assert httpx.get(f"{api.url}/metrics", headers=headers).status_code == 200
    for path in ("/api/v1/vms", "/api/v1/hosts", "/api/v1/projects", "/api/v1/events", "/api/v1/audit",
                 "/api/v1/host/top", "/api/v1/whoami"):
        refused = httpx.get(f"{api.url}{path}", headers=headers)
        assert refused.status_code == 403, (path, refused.text)
        assert "metrics token" in refused.json()["detail"]
    assert httpx.get(f"{api.url}/metrics").status_code == 401
