"""Fixtures for browser tests: the whole platform as real processes, and headless Chromium
(Debian's package, never a downloaded browser)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests

from tests.conftest import EXAMPLES, MODEL_CACHE
from tests.e2e.platform import Platform

CHROMIUM = Path(os.environ.get("DORADO_TEST_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
    "--disable-quic",
]
WEB_API_KEY = "dor-web-module-key-0000000000"
PAGE_ERRORS: list[str] = []
"""Uncaught JavaScript errors of the pages :func:`open_page` opened, since the test began."""


@contextmanager
def open_page(browser, platform: Platform, **context_options) -> Iterator:
    """A dashboard page of ``platform`` (1280x900, 15 s timeouts) in a context of its own,
    whose uncaught script errors go to :data:`PAGE_ERRORS`; closed afterwards."""
    context = browser.new_context(
        base_url=f"http://127.0.0.1:{platform.port}",
        viewport={"width": 1280, "height": 900},
        **context_options,
    )
    context.set_default_timeout(15_000)
    opened = context.new_page()
    opened.on("pageerror", lambda exc: PAGE_ERRORS.append(str(exc)))
    try:
        yield opened
    finally:
        context.close()


def sign_in(page) -> None:
    """Sign ``page`` in with the test key and wait for the jobs list."""
    from playwright.sync_api import expect

    page.goto("/")
    page.get_by_label("API key").fill(WEB_API_KEY)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Fine-tuning jobs")).to_be_visible()


def upload_example(platform: Platform, name: str) -> str:
    """Uploads ``examples/<name>`` for fine-tuning through the API; returns the file id."""
    with open(EXAMPLES / name, "rb") as handle:
        resp = requests.post(
            f"{platform.base_url}/files",
            headers=platform.headers(),
            files={"file": (name, handle)},
            data={"purpose": "fine-tune"},
            timeout=60,
        )
    assert resp.status_code == 200, resp.text
    return resp.json()["id"]


@pytest.fixture(autouse=True)
def no_script_errors() -> Iterator[None]:
    """Any uncaught error in the dashboard's JavaScript fails the step that caused it."""
    PAGE_ERRORS.clear()
    yield
    assert not PAGE_ERRORS, f"JavaScript errors: {PAGE_ERRORS}"


@pytest.fixture(scope="module")
def platform(tmp_path_factory) -> Iterator[Platform]:
    """API, worker and scheduler (embedded defaults) shared by the browser tests of a module."""
    home = tmp_path_factory.mktemp("web-platform") / "home"
    running = Platform(home, WEB_API_KEY, MODEL_CACHE, {"DORADO_LEASE_SECONDS": "20"}).start()
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator:
    """Headless Chromium driven by Playwright. Missing Chromium is an error, not a skip:
    `make test` installs it (apt-get install chromium)."""
    from playwright.sync_api import sync_playwright

    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: run `make chromium` (apt-get install chromium)")
    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()
