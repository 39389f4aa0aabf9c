"""Browser tests: the dashboard in Debian's headless Chromium, driven by Playwright for Python.

The browser is the system's /usr/bin/chromium (``playwright install`` downloads nothing here);
without it these tests fail, never skip. Screenshots go to .cache/artifacts/browser/ (printed
by each test), to be looked at.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, sync_playwright

from tests.conftest import REPO, Server, make_server, qemu_pids

CHROMIUM = os.environ.get("VIRTPOOL_CHROMIUM", "/usr/bin/chromium")
# As root, Chromium needs --no-sandbox; the rest keeps it from reaching anything but the
# server under test (no updates, no sync, no QUIC probes). Playwright gives it a fresh
# --user-data-dir of its own.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
# TCG on a 2-core machine that every engineer's tests share: boots can take minutes.
BOOT_TIMEOUT_S = 600
ARTIFACTS = Path(os.environ.get("VIRTPOOL_ARTIFACTS", REPO / ".cache" / "artifacts")) / "browser"


# Per module, not per session: Playwright's sync API keeps an event loop running in the main
# thread while it is open, and every later test that calls asyncio.run() would fail.
@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: run scripts/install-system-packages.sh --test")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory, image_cache: Path) -> Iterator[Server]:
    """A `virtpool up` per test module, with the default image; no QEMU outlives it."""
    srv = make_server(tmp_path_factory, image_cache, "dash", boot_timeout=BOOT_TIMEOUT_S)
    yield srv
    srv.cleanup()
    assert qemu_pids(srv.data_dir) == []


@pytest.fixture(scope="session")
def artifacts() -> Path:
    # Not emptied first: parallel workers share the directory; each shot has its own name.
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    print(f"\nscreenshots: {ARTIFACTS}")
    return ARTIFACTS


class Dashboard:
    """One browser tab on the dashboard, signed in with one token."""

    def __init__(self, page: Page, url: str, artifacts: Path) -> None:
        self.page = page
        self.url = url
        self.artifacts = artifacts
        self.errors: list[str] = []
        self.urls: list[str] = []  # every address the tab asked for, websockets included
        page.on("pageerror", lambda err: self.errors.append(str(err)))
        page.on("request", lambda request: self.urls.append(request.url))
        page.on("websocket", lambda socket: self.urls.append(socket.url))
        page.on("console", self._console)

    def _console(self, message: ConsoleMessage) -> None:
        # A 4xx is a refusal the page shows (a bad form, another project's VM): not an error.
        if message.type == "error" and "responded with a status of 4" not in message.text:
            self.errors.append(message.text)

    def sign_in(self, token: str) -> Dashboard:
        self.page.goto(self.url + "/")
        self.page.fill("#token", token)
        self.page.click("#signin button[type=submit]")
        self.page.wait_for_selector("#main[data-ready]")
        return self

    def open(self, route: str, timeout: float = 30_000) -> None:
        """Go to ``#/route`` and wait until its page has rendered."""
        self.page.evaluate("route => { location.hash = route }", f"#/{route}")
        ready = route.split("/")[0].split("?")[0]
        self.page.wait_for_selector(f'#main[data-ready="{ready}"]', timeout=timeout)

    def shot(self, name: str) -> Path:
        path = self.artifacts / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        return path


@pytest.fixture
def dashboard(browser: Browser, artifacts: Path) -> Iterator[callable]:  # type: ignore[valid-type]
    """Make tabs: ``dashboard(url)``; each tab has its own session storage."""
    contexts = []

    def make(url: str) -> Dashboard:
        context = browser.new_context(viewport={"width": 1400, "height": 900})
        contexts.append(context)
        return Dashboard(context.new_page(), url, artifacts)

    yield make
    for context in contexts:
        context.close()
