"""With 1,000 VMs the overview and the VM list (its first page of 100, filters over all 1,000)
render in the browser in about a second or less.

The VMs are records (a control-plane-only `virtpool server` on a database seeded directly),
spread over projects, hosts and states. The figures are printed, never asserted: timing
depends on a machine that others share. What is asserted is that all 1,000 are on the page.
"""

from __future__ import annotations

import statistics
import time
import uuid
from collections.abc import Callable, Iterator

import pytest
from playwright.sync_api import expect
from sqlalchemy import update
from sqlalchemy.orm import Session

from tests.browser.conftest import Dashboard
from tests.conftest import Server, make_server
from virtpool.control.store import db
from virtpool.control.store.tables import HostRow, VMRow

pytestmark = pytest.mark.browser

VMS = 1000
PROJECTS = ["default", "dbs-a", "dbs-b", "dbs-c"]
HOSTS = ["db-rack1", "db-rack2", "db-rack3", "db-rack4"]
STATES = ["running", "stopped", "stopped", "paused", "crashed"]
ROUNDS = 3


@pytest.fixture(scope="module")
def big_pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = make_server(tmp_path_factory, None, "scale", command="server")
    api = srv.api()
    for project in PROJECTS[1:]:
        api.create_project(project)
    for host in HOSTS:
        api.add_host(host, cpus=64, memory_mib=256 * 1024, disk_mib=8 * 1024 * 1024)
    engine = db.open_database(db.sqlite_url(srv.data_dir / "state.db"))
    with Session(engine) as session, session.begin():
        session.add_all(
            VMRow(id=uuid.uuid4().hex, name=f"vm-{i:04d}", project_id=PROJECTS[i % len(PROJECTS)], image="default",
                  cpus=1 + (i // 4) % 2, memory_mib=256, disk_mib=1024, kernel_args="", accel="auto", max_memory_mib=256,
                  cpu_weight=100, slot=i, state=STATES[i % len(STATES)], host=HOSTS[i % len(HOSTS)])
            for i in range(VMS))
        for n, host in enumerate(HOSTS):
            mine = [i for i in range(VMS) if i % len(HOSTS) == n]
            session.execute(update(HostRow).where(HostRow.name == host).values(
                used_cpus=sum(1 + (i // 4) % 2 for i in mine), used_memory_mib=256 * len(mine),
                used_disk_mib=1024 * len(mine)))
    engine.dispose()
    yield srv
    srv.stop()


def test_overview_and_vm_list_with_1000_vms(big_pool: Server, dashboard: Callable[[str], Dashboard]) -> None:
    token = (big_pool.data_dir / "admin.token").read_text().strip()
    tab = dashboard(big_pool.api().url).sign_in(token)
    figures: dict[str, list[float]] = {"overview": [], "vms": []}
    for _ in range(ROUNDS):
        for route in ("vms", "overview"):
            tab.open("audit")  # somewhere else first, so that each round renders afresh
            started = time.perf_counter()
            tab.open(route)
            wall_ms = (time.perf_counter() - started) * 1000
            in_page_ms = float(tab.page.locator("#main").get_attribute("data-route-ms"))
            figures[route].append(in_page_ms)
            calls = tab.page.evaluate("""performance.getEntriesByType('resource')
                .filter(e => e.name.includes('/api/v1/')).slice(-6)
                .map(e => `${new URL(e.name).pathname} ${Math.round(e.duration)} ms`)""")
            # Where the time went: the page marks the route's start, its data in, its DOM built.
            marks = tab.page.evaluate("""(() => {
                const at = name => (performance.getEntriesByName(name, 'mark').pop() || {}).startTime;
                const start = at('route:start');
                return ['vms:fetched', 'vms:dom'].filter(at).map(n => `${n} +${Math.round(at(n) - start)} ms`);
            })()""") if route == "vms" else []
            tab.page.evaluate("performance.clearResourceTimings(); performance.clearMarks()")
            print(f"\n{route}: rendered in {in_page_ms:.0f} ms in the page ({wall_ms:.0f} ms seen by the test); API calls: {', '.join(calls)}; {', '.join(marks)}")
    expect(tab.page.locator('[data-count="all"]')).to_have_text(str(VMS))
    expect(tab.page.locator(".host")).to_have_count(len(HOSTS))
    tab.shot("07-overview-1000")
    tab.open("vms")
    page = tab.page
    # All 1,000 are listed, a page of 100 at a time; the last page holds the last VM.
    expect(page.locator("#vm-count")).to_have_text(f"({VMS} of {VMS})")
    expect(page.locator("table.vms tbody tr")).to_have_count(100)
    tab.shot("08-vms-1000")
    for _ in range(VMS // 100 - 1):
        page.click('button[data-page="1"]')
    expect(page.locator("#vm-range")).to_have_text(f"901–1000 of {VMS}")
    expect(page.locator("table.vms tbody tr").last).to_contain_text(f"vm-{VMS - 1:04d}")
    assert page.locator('button[data-page="1"]').is_disabled()
    # The filters work on the whole list, not the page shown.
    page.select_option("#filters select[name=project]", "dbs-a")
    page.select_option("#filters select[name=state]", "running")
    expected = sum(1 for i in range(VMS) if PROJECTS[i % 4] == "dbs-a" and STATES[i % 5] == "running")
    expect(page.locator("#vm-count")).to_have_text(f"({expected} of {VMS})")
    expect(page.locator("table.vms tbody tr")).to_have_count(min(expected, 100))
    medians = {route: statistics.median(values) for route, values in figures.items()}
    print(f"\nmedian render with {VMS} VMs: overview {medians['overview']:.0f} ms, VM list {medians['vms']:.0f} ms "
          f"(target: 1000 ms; {ROUNDS} rounds)")
    # The VM list asks for images to fill its create form; a control plane without an agent
    # answers 503 "no agent attached", and the form offers none. Nothing else may fail.
    assert [e for e in tab.errors if "status of 503" not in e] == [], tab.errors
