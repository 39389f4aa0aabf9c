"""The dashboard as a user works it, in a real browser against a real `virtpool up` whose VMs
are real QEMU guests: sign in, create a VM from the form (after a refused one), watch it reach
running, use its serial console, look at every page, stop it and delete it."""

from __future__ import annotations

import re
import time
from collections.abc import Callable

import httpx
import pytest
from playwright.sync_api import expect
from prometheus_client.parser import text_string_to_metric_families

from tests.browser.conftest import BOOT_TIMEOUT_S, Dashboard
from tests.conftest import Server, qemu_pids, wait_for

pytestmark = [pytest.mark.vm, pytest.mark.browser]



def admin_token(srv: Server) -> str:
    return (srv.data_dir / "admin.token").read_text().strip()


def transmitted(srv: Server, vm: str) -> float | None:
    """The VM's network transmit counter in /metrics (None: no such series)."""
    text = httpx.get(f"{srv.api().url}/metrics", headers={"Authorization": f"Bearer {admin_token(srv)}"}).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "virtpool_vm_network_transmit_bytes_total" and sample.labels.get("vm") == vm:
                return sample.value
    return None


def test_sign_in_create_console_stop_delete(pool: Server, dashboard: Callable[[str], Dashboard]) -> None:
    tab = dashboard(pool.api().url).sign_in(admin_token(pool))
    page = tab.page
    # The token is in session storage, and in no URL the page ever loaded.
    assert page.evaluate("sessionStorage.getItem('virtpool.token')") == admin_token(pool)
    assert admin_token(pool) not in page.url
    tab.shot("01-overview")

    tab.open("vms")
    form = page.locator("#create")
    # A refused create shows the API's own messages next to the fields, and creates nothing.
    form.locator("input[name=name]").fill("Bad Name")
    form.locator("input[name=memory_mib]").fill("10")
    form.locator("button[type=submit]").click()
    name_error = form.locator('.field-error[data-field="name"]')
    expect(name_error).to_contain_text("not a valid name")
    expect(form.locator('.field-error[data-field="memory_mib"]')).to_contain_text("greater than or equal to 64")
    tab.shot("02-create-refused")
    assert pool.api().vms(all_projects=True) == []

    form.locator("input[name=name]").fill("dbweb")
    form.locator("input[name=memory_mib]").fill("256")
    form.locator("button[type=submit]").click()
    page.wait_for_selector('#main[data-ready="vm"]')
    vm = pool.api().wait_vm("dbweb", timeout=BOOT_TIMEOUT_S + 30)
    assert vm.state == "running", vm.error
    expect(page.locator("#vm-state")).to_have_text("running", timeout=30_000)

    # The console: type a command, read its output in the terminal.
    expect(page.locator("#console-state")).to_have_text("connected", timeout=30_000)
    terminal = page.locator("#terminal .xterm-rows")
    page.locator("#terminal").click()
    deadline = time.monotonic() + 60
    while "db-console-42" not in terminal.inner_text() and time.monotonic() < deadline:
        page.keyboard.type("echo db-console-$((6*7))\n")
        page.wait_for_timeout(2000)
    assert "db-console-42" in terminal.inner_text()

    # Live graphs fill from the usage history (a sample every 5 s).
    expect(page.locator("#graph-note")).to_contain_text(re.compile(r"[2-9]\d* samples|\d{2,} samples"), timeout=60_000)
    assert page.locator(".uplot").count() == 4

    # Traffic from the guest: its transmit counter rises in /metrics, and the network graph
    # draws points (the default network's counters come from the guest agent).
    # (The guest agent is asked in the background: on a busy host its first answer may take a while.)
    before = wait_for(lambda: transmitted(pool, "dbweb"), timeout=60, interval=1)
    assert before is not None, "no network counter for dbweb in /metrics"
    pool.api().exec("dbweb", ["ping", "-c", "20", "-i", "0.05", "-W", "1", "-s", "1000", "10.0.2.2"], timeout=60)
    assert wait_for(lambda: (transmitted(pool, "dbweb") or 0) >= before + 20_000, timeout=60, interval=1)
    expect(page.locator('[data-chart="net"]')).to_have_attribute("data-points", re.compile(r"^([2-9]|\d{2,})$"),
                                                                timeout=60_000)
    expect(page.locator("h4", has_text="Network")).to_have_text("Network")

    # The history is the database's: after a restart of the platform (the VM runs on), the VM
    # page still shows the samples taken before it.
    kept = pool.api().vm("dbweb")
    seen = int(page.locator('[data-chart="cpu"]').get_attribute("data-points") or 0)
    assert tab.errors == [], tab.errors
    page.close()  # its server goes away: what it would log then is no dashboard fault
    restarted_at = time.time()
    pool.stop()
    pool.start()  # on a new port: a new tab
    assert pool.api().vm("dbweb").started_at == kept.started_at  # the same QEMU, not a new boot
    tab = dashboard(pool.api().url).sign_in(admin_token(pool))
    page = tab.page
    tab.open("vm/default/dbweb")
    expect(page.locator('[data-chart="cpu"]')).to_have_attribute("data-points", re.compile(r"^\d+$"))
    assert int(page.locator('[data-chart="cpu"]').get_attribute("data-points") or 0) >= seen
    history = httpx.get(f"{pool.api().url}/api/v1/vms/dbweb/history",
                        headers={"Authorization": f"Bearer {admin_token(pool)}"}).json()
    assert history["points"][0]["t"] < restarted_at - 10, history["points"][:2]
    expect(page.locator("#console-state")).to_have_text("connected", timeout=30_000)
    expect(page.locator("#vm-events")).to_contain_text("VM 'dbweb' is running")
    expect(page.locator("#vm-ops")).to_contain_text("vm.create")
    tab.shot("03-vm-running")

    for route in ("overview", "vms", "events", "operations", "projects", "audit"):
        tab.open(route)
        page.wait_for_timeout(1500)  # live parts (stream, bars) settle
        tab.shot(f"04-{route}")
    expect(page.locator("table.audit")).to_contain_text("POST /vms")
    tab.open("operations")
    expect(page.locator("tr", has_text="vm.create").first.locator("progress")).to_have_attribute("value", "100")
    tab.open("overview")
    expect(page.locator('[data-count="running"]')).to_have_text("1")

    # Stop from the VM page, then delete it there.
    tab.open("vm/default/dbweb")
    page.locator('#vm-actions button[data-action="stop"]').click()
    expect(page.locator("#vm-state")).to_have_text("stopped", timeout=120_000)
    page.once("dialog", lambda dialog: dialog.accept())
    page.locator('#vm-actions button[data-action="delete"]').click()
    page.wait_for_selector('#main[data-ready="vms"]')
    expect(page.locator("table.vms tbody tr")).to_have_count(0)
    assert pool.api().vms(all_projects=True) == []
    assert qemu_pids(pool.data_dir) == []
    assert tab.errors == [], tab.errors
    # The token went in headers only: no address the page asked for carries it, not the event
    # stream's, not the console's.
    assert any("/events/stream" in url for url in tab.urls) and any(url.startswith("ws://") for url in tab.urls)
    assert [url for url in tab.urls if admin_token(pool) in url] == []


def test_project_token_sees_only_its_project(pool: Server, dashboard: Callable[[str], Dashboard]) -> None:
    api = pool.api()
    for project in ("dba", "dbb"):
        api.create_project(project)
    member = api.create_token("dba-member", "member", project="dba").token
    viewer = api.create_token("dba-viewer", "viewer", project="dba").token
    with api.__class__(api.url, api.token, project="dba") as in_a, \
            api.__class__(api.url, api.token, project="dbb") as in_b:
        in_a.create_vm("alpha")
        in_b.create_vm("secret-b")
    try:
        tab = dashboard(api.url).sign_in(member)
        page = tab.page
        expect(page.locator("#who")).to_contain_text("member in dba")
        tab.open("vms")
        rows = page.locator("table.vms tbody tr")
        expect(rows).to_have_count(1)
        expect(rows.first).to_contain_text("alpha")
        assert "secret-b" not in page.content() and "dbb" not in page.content()
        tab.shot("05-project-member-vms")
        tab.open("projects")
        expect(page.locator(".project")).to_have_count(1)
        assert "dbb" not in page.content()
        tab.open("overview")
        expect(page.locator('[data-count="all"]')).to_have_text("1")
        # Another project's VM, asked for by address, is not there.
        tab.open("vm/dbb/secret-b")
        expect(page.locator("#main")).to_contain_text("no project named 'dbb'")

        # A viewer sees the same, without any way to change a VM.
        look = dashboard(api.url).sign_in(viewer)
        look.open("vms")
        expect(look.page.locator("table.vms tbody tr")).to_have_count(1)
        assert look.page.locator("#create").count() == 0
        assert look.page.locator("button[data-action]").count() == 0
        look.open("vm/dba/alpha")
        expect(look.page.locator(".console")).to_contain_text("takes the member role")
        look.shot("06-project-viewer-vm")
        assert tab.errors == [] and look.errors == [], (tab.errors, look.errors)
    finally:
        with api.__class__(api.url, api.token, project="dba") as in_a, \
                api.__class__(api.url, api.token, project="dbb") as in_b:
            in_a.delete_vm("alpha", force=True)
            in_b.delete_vm("secret-b", force=True)
