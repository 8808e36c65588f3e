"""The dashboard's settings page in a real browser: an admin adds a webhook endpoint (the
secret shown once), a job's cancellation is delivered to a real receiver on loopback by the
platform's own scheduler, the delivery log shows it, "Resend" sends it again; disable and
delete; a member-scope session is told it needs an admin key.

The tests run in file order and share one signed-in page, as a user's session would.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import openai
import pytest
import requests
from playwright.sync_api import Page, expect

from tests.conftest import EXAMPLES, MODEL_CACHE
from tests.e2e.platform import Platform
from tests.web.conftest import WEB_API_KEY, open_page
from tests.webhooks.receiver import Receiver


@pytest.fixture(scope="module")
def platform(tmp_path_factory) -> Iterator[Platform]:
    """`dorado run` whose scheduler may deliver to loopback, retrying quickly."""
    home = tmp_path_factory.mktemp("web-webhooks") / "home"
    extra = {
        "DORADO_WEBHOOKS_ALLOW_PRIVATE": "1",
        "DORADO_WEBHOOKS_RETRY_BASE_SECONDS": "0.5",
        "DORADO_WEBHOOKS_POLL_SECONDS": "0.1",
    }
    running = Platform(home, WEB_API_KEY, MODEL_CACHE, extra).start()
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    rec = Receiver()
    yield rec
    rec.close()


@pytest.fixture(scope="module")
def state() -> dict[str, Any]:
    return {}


@pytest.fixture(scope="module")
def page(browser, platform: Platform) -> Iterator[Page]:
    with open_page(browser, platform) as opened:
        opened.on("dialog", lambda dialog: dialog.accept())  # the delete confirmation
        yield opened


def sign_in(page: Page, key: str) -> None:
    page.goto("/")
    page.get_by_label("API key").fill(key)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Fine-tuning jobs")).to_be_visible()


def cancelled_job(platform: Platform) -> str:
    """A job of the organization, created and cancelled through the API (an event)."""
    with open(EXAMPLES / "pirate.jsonl", "rb") as fh:
        upload = requests.post(
            f"{platform.base_url}/files",
            headers=platform.headers(),
            files={"file": ("pirate.jsonl", fh)},
            data={"purpose": "fine-tune"},
            timeout=30,
        )
    assert upload.ok, upload.text
    created = requests.post(
        f"{platform.base_url}/fine_tuning/jobs",
        headers=platform.headers(),
        json={"model": "tiny-random-llama", "training_file": upload.json()["id"]},
        timeout=30,
    )
    assert created.ok, created.text
    job_id = created.json()["id"]
    cancel = requests.post(
        f"{platform.base_url}/fine_tuning/jobs/{job_id}/cancel",
        headers=platform.headers(),
        timeout=30,
    )
    assert cancel.ok, cancel.text
    return job_id


def test_admin_adds_an_endpoint_and_sees_the_secret_once(
    page: Page, receiver: Receiver, state: dict[str, Any]
):
    sign_in(page, WEB_API_KEY)
    page.get_by_role("link", name="Settings").click()
    expect(page.get_by_role("heading", name="Settings")).to_be_visible()
    expect(page.locator("#webhooks-list .empty")).to_contain_text("No webhook endpoints yet")

    page.get_by_label("Receiver URL").fill("ftp://example.com/hook")  # only http(s)
    page.get_by_role("button", name="Add endpoint").click()
    expect(page.get_by_role("alert")).to_contain_text("The endpoint was refused")

    page.get_by_label("Receiver URL").fill(receiver.url("/dorado"))
    page.get_by_label("Name (optional)").fill("ci receiver")
    page.get_by_label("fine_tuning.job.checkpoint").uncheck()
    page.get_by_role("button", name="Add endpoint").click()
    secret = page.locator("#signing-secret").inner_text()
    assert secret.startswith("whsec_")
    state["secret"] = secret
    row = page.locator("#endpoints tbody tr")
    expect(row).to_have_count(1)
    expect(row).to_contain_text("ci receiver")
    expect(row).to_contain_text(f"whsec_...{secret[-4:]}")
    expect(row).not_to_contain_text("fine_tuning.job.checkpoint")
    # Shown once: a reload lists the endpoint with its hint only.
    page.reload()
    expect(page.locator("#endpoints tbody tr")).to_have_count(1)
    assert secret not in page.content()


def test_a_delivery_reaches_the_receiver_and_is_logged(
    page: Page, platform: Platform, receiver: Receiver, state: dict[str, Any]
):
    job_id = cancelled_job(platform)
    got = receiver.wait_for(1, timeout=30)
    hook = openai.OpenAI(api_key="unused", base_url=platform.base_url)
    event = hook.webhooks.unwrap(got[0].body, got[0].headers, secret=state["secret"])
    assert event.type == "fine_tuning.job.cancelled" and event.data.id == job_id
    state["webhook_id"] = got[0].headers["webhook-id"]

    page.get_by_role("button", name="Deliveries").click()
    delivery = page.locator("#deliveries tbody tr")
    expect(delivery).to_have_count(1)
    expect(delivery.locator(".delivery-code")).to_have_text("200")  # the poll catches up
    expect(delivery).to_contain_text("fine_tuning.job.cancelled")
    expect(delivery).to_contain_text(job_id)
    expect(delivery.locator(".delivery-attempts")).to_have_text("1")
    expect(delivery).to_contain_text(" ms")


def test_resend_delivers_it_again_with_the_same_id(
    page: Page, receiver: Receiver, state: dict[str, Any]
):
    page.locator("#deliveries").get_by_role("button", name="Resend").click()
    got = receiver.wait_for(2, timeout=30)
    assert got[1].headers["webhook-id"] == state["webhook_id"]
    expect(page.locator("#deliveries .delivery-code")).to_have_text("200")
    expect(page.locator("#deliveries .delivery-attempts")).to_have_text("1")


def test_disable_enable_and_delete(page: Page):
    row = page.locator("#endpoints tbody tr")
    row.get_by_role("button", name="Disable").click()
    expect(row.locator(".endpoint-state")).to_have_text("disabled")
    row.get_by_role("button", name="Enable").click()
    expect(row.locator(".endpoint-state")).to_have_text("enabled")
    row.get_by_role("button", name="Delete").click()
    expect(page.locator("#webhooks-list .empty")).to_contain_text("No webhook endpoints yet")
    expect(page.locator("#webhook-deliveries")).to_be_empty()


def test_a_member_session_is_told_it_needs_an_admin_key(page: Page, platform: Platform):
    member = requests.post(
        f"{platform.base_url}/organization/api_keys",
        headers=platform.headers(),
        json={"name": "member", "scope": "member"},
        timeout=30,
    ).json()["key"]
    page.context.clear_cookies()
    sign_in(page, member)
    expect(page.get_by_role("link", name="Settings")).to_have_count(0)
    page.evaluate("() => { window.location.hash = '#/settings'; }")
    expect(page.locator("#needs-admin")).to_contain_text("admin-scope API key")
    expect(page.locator("#webhook-form")).to_have_count(0)
