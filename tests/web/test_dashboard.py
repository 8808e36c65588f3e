"""The dashboard in a real browser against the running platform: sign in, files, a job from
the New job form to its downloaded adapter, cancel, compare, CSRF, sign out.

The tests run in file order and share one signed-in page; each step depends on the ones
before it, as a user's session would. Screenshots land in docs/screenshots/.
"""

from __future__ import annotations

import io
import re
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page, expect

from core.jobs.status import FAILURE_HELP, FailureCode
from tests.conftest import EXAMPLES, ROOT
from tests.e2e.platform import Platform
from tests.web.conftest import WEB_API_KEY, open_page

SCREENSHOTS = ROOT / "docs" / "screenshots"
JOB_TIMEOUT_MS = 150_000
BAD_FILE = (
    b'{"messages": [{"role": "user", "content": "hi"}, '
    b'{"role": "assistant", "content": "hello"}]}\n'
    b"this is not json\n"
    b'{"messages": [{"role": "user", "content": "no answer"}]}\n'
)


@pytest.fixture(scope="module")
def state() -> dict[str, Any]:
    """What earlier steps created (file and job ids), for later steps."""
    return {}


@pytest.fixture(scope="module")
def page(browser, platform: Platform) -> Iterator[Page]:
    with open_page(browser, platform, accept_downloads=True) as opened:
        yield opened


def shot(page: Page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / name), full_page=True)


def open_view(page: Page, hash_path: str) -> None:
    page.evaluate("h => { window.location.hash = h; }", hash_path)


def test_sign_in(page: Page):
    response = page.goto("/")
    headers = response.headers
    assert "script-src 'self'" in headers["content-security-policy"]
    assert "frame-ancestors 'none'" in headers["content-security-policy"]
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["x-frame-options"] == "DENY"
    assert headers["referrer-policy"] == "same-origin"

    page.get_by_label("API key").fill("dor-not-a-real-key-000000")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_contain_text("not valid")

    page.get_by_label("API key").fill(WEB_API_KEY)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Fine-tuning jobs")).to_be_visible()
    expect(page.locator(".empty")).to_contain_text("No fine-tuning jobs yet")
    cookie = next(c for c in page.context.cookies() if c["name"] == "dorado_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Lax"
    assert WEB_API_KEY not in cookie["value"]


def test_state_changing_calls_need_the_csrf_token(page: Page):
    status = page.evaluate("""async () => {
        const r = await fetch('/v1/fine_tuning/jobs/estimate', {method: 'POST',
            headers: {'Content-Type': 'application/json'}, body: '{}'});
        return [r.status, (await r.json()).error.code];
    }""")
    assert status == [403, "csrf_failed"]
    status = page.evaluate("""async () => {
        const r = await fetch('/v1/files/file-nope', {method: 'DELETE',
            headers: {'X-CSRF-Token': 'wrong'}});
        return r.status;
    }""")
    assert status == 403
    # With the page's token the same call reaches the API (and fails only on its body).
    status = page.evaluate("""async () => {
        const token = document.querySelector('meta[name="csrf-token"]').content;
        const r = await fetch('/v1/fine_tuning/jobs/estimate', {method: 'POST',
            headers: {'Content-Type': 'application/json', 'X-CSRF-Token': token}, body: '{}'});
        return r.status;
    }""")
    assert status == 400
    response = page.request.post("/logout", form={"csrf_token": "forged"})
    assert response.status == 403
    # GETs need no token: the session alone authenticates them.
    assert page.evaluate("async () => (await fetch('/v1/models')).status") == 200


def test_bad_file_shows_line_errors(page: Page):
    open_view(page, "#/files")
    expect(page.get_by_role("heading", name="Files", exact=True)).to_be_visible()
    expect(page.locator(".empty")).to_contain_text("No files yet")
    page.get_by_label("Training or validation file").set_input_files(
        {"name": "broken.jsonl", "mimeType": "application/jsonl", "buffer": BAD_FILE}
    )
    page.get_by_role("button", name="Upload and validate").click()
    error = page.locator("#upload-error")
    expect(error).to_contain_text("rejected")
    expect(error.locator("li").filter(has_text=re.compile(r"^Line 2: "))).to_have_count(1)
    expect(error.locator("li").filter(has_text=re.compile(r"^Line 3: "))).to_have_count(1)


def test_good_file_shows_report(page: Page, state: dict[str, Any]):
    page.get_by_label("Training or validation file").set_input_files(str(EXAMPLES / "pirate.jsonl"))
    page.get_by_role("button", name="Upload and validate").click()
    report = page.locator("#upload-report")
    expect(report).to_contain_text("is valid")
    expect(page.locator("#example-count")).to_have_text("52")
    expect(report).to_contain_text("characters")
    expect(page.locator("#upload-progress")).to_have_attribute("value", "100")
    row = page.locator("tr[data-file-id]")
    expect(row).to_have_count(1)
    state["file_id"] = row.get_attribute("data-file-id")
    assert state["file_id"].startswith("file-")


def fill_new_job(
    page: Page,
    state: dict[str, Any],
    *,
    adapter: str,
    epochs: int,
    batch: int | None,
    suffix: str,
    validation: bool,
) -> None:
    open_view(page, "#/new")
    expect(page.get_by_role("heading", name="New fine-tuning job")).to_be_visible()
    option = page.locator(f"#training-file option[value='{state['file_id']}']")
    expect(option).to_have_count(1)
    page.get_by_label("Training file", exact=True).select_option(state["file_id"])
    if validation:
        page.get_by_label("Validation file (optional)").select_option(state["file_id"])
    page.get_by_label("Base model").select_option("tiny-random-llama")
    page.get_by_label(adapter, exact=True).check()
    page.get_by_label("Rank (r)").fill("8")
    page.get_by_label("Alpha").fill("16")
    page.get_by_label("Epochs").fill(str(epochs))
    if batch is not None:
        page.get_by_label("Batch size").fill(str(batch))
    page.get_by_label("Suffix (optional)").fill(suffix)


def test_new_job_trains_and_charts(page: Page, state: dict[str, Any], tmp_path: Path):
    fill_new_job(page, state, adapter="LoRA", epochs=2, batch=None, suffix="webui", validation=True)
    # 52 examples, auto batch size 5: 11 steps per epoch, 22 in all.
    expect(page.locator("#estimate")).to_have_attribute("data-total-steps", "22")
    expect(page.locator("#estimate")).to_contain_text("tokens (estimated)")
    expect(page.locator("#estimate")).to_contain_text("MiB per GPU")  # the memory planner
    page.get_by_role("button", name="Start fine-tuning").click()
    page.wait_for_url(re.compile(r"#/jobs/ftjob-"))
    job_id = page.url.rsplit("/", 1)[-1]
    state["job_id"] = job_id
    expect(page.get_by_role("heading", level=1)).to_have_text(f"{job_id} (webui)")

    expect(page.locator("#view")).to_have_attribute(
        "data-job-status", "succeeded", timeout=JOB_TIMEOUT_MS
    )
    expect(page.locator(".job-status .badge")).to_have_text("succeeded")
    chart = page.locator("#loss-chart")
    expect(chart).not_to_have_attribute("data-points", "0")
    assert int(chart.get_attribute("data-points")) >= 20
    assert int(chart.get_attribute("data-series")) >= 2  # training and validation loss
    inked = page.evaluate("""() => {
        const c = document.getElementById('loss-chart');
        const px = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let blue = 0;  // the training-loss colour, #1f6feb
        for (let i = 0; i < px.length; i += 4) {
            if (px[i] < 60 && px[i + 1] > 90 && px[i + 1] < 130 && px[i + 2] > 200) blue++;
        }
        return blue;
    }""")
    assert inked > 100, "the training loss curve was not drawn"
    assert int(page.locator("#accuracy-chart").get_attribute("data-points")) > 0
    expect(page.locator("#loss-chart + figcaption")).to_contain_text("latest training loss")
    # DPO's reward chart is for DPO jobs: no empty card on a supervised one (wide layout too).
    expect(page.locator("#reward-figure")).to_be_hidden()

    settings = page.locator("section[aria-labelledby='h-settings']")
    expect(settings).to_contain_text("LoRA")
    expect(settings.locator("dd").filter(has_text=re.compile(r"^16$"))).to_have_count(1)
    expect(page.locator(".event-log")).to_contain_text("The job has successfully completed")
    expect(page.locator("#cancel-job")).to_be_disabled()
    expect(page.locator("#pause-job")).to_be_disabled()
    expect(page.locator("#resume-job")).to_be_disabled()
    expect(page.locator("#checkpoints a").first).to_have_attribute(
        "href", re.compile(rf"/v1/fine_tuning/jobs/{job_id}/adapter\?checkpoint=")
    )
    shot(page, "job-page.png")

    with page.expect_download() as info:
        page.locator("#download-adapter").click()
    download = info.value
    assert download.suggested_filename == f"{job_id}-adapter.tar.gz"
    saved = tmp_path / "adapter.tar.gz"
    download.save_as(saved)
    data = saved.read_bytes()
    assert data[:2] == b"\x1f\x8b"  # gzip
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        assert {"adapter_config.json", "adapter_model.safetensors"} <= set(tar.getnames())


def test_long_job_shows_progress_and_can_be_cancelled(page: Page, state: dict[str, Any]):
    fill_new_job(page, state, adapter="DoRA", epochs=50, batch=1, suffix="long", validation=False)
    expect(page.locator("#estimate")).to_have_attribute("data-total-steps", "2600")
    page.get_by_role("button", name="Start fine-tuning").click()
    page.wait_for_url(re.compile(r"#/jobs/ftjob-"))
    job_id = page.url.rsplit("/", 1)[-1]
    state["long_job_id"] = job_id
    expect(page.locator("#view")).to_have_attribute(
        "data-job-status", "running", timeout=JOB_TIMEOUT_MS
    )
    expect(page.locator("#pause-job")).to_be_enabled()
    expect(page.locator("#resume-job")).to_be_disabled()
    expect(page.locator("#loss-chart")).not_to_have_attribute("data-points", "0", timeout=60_000)

    # The list shows it running with a progress bar, and updates without a reload.
    open_view(page, "#/jobs")
    row = page.locator(f"tr[data-job-id='{job_id}']")
    expect(row.locator(".badge")).to_have_text("running")
    expect(row.locator("progress")).to_be_visible()
    first = row.locator(".progress-text").inner_text()
    assert re.match(r"[\d.]+% \(step \d+/2600\)", first), first
    expect(row.locator(".progress-text")).not_to_have_text(first, timeout=20_000)
    done = page.locator(f"tr[data-job-id='{state['job_id']}']")
    expect(done.locator(".badge")).to_have_text("succeeded")
    expect(done).to_contain_text("LoRA r8")
    expect(done).to_contain_text("tiny-random-llama")
    shot(page, "jobs-list.png")

    page.get_by_label("Status").select_option("succeeded")
    expect(page.locator("tr[data-job-id]")).to_have_count(1)
    expect(page.locator(f"tr[data-job-id='{state['job_id']}']")).to_be_visible()
    page.get_by_label("Status").select_option("failed")
    expect(page.locator(".empty")).to_contain_text("No failed jobs")
    page.get_by_label("Status").select_option("")

    page.locator(f"tr[data-job-id='{job_id}'] a").click()
    expect(page.locator("#cancel-job")).to_be_enabled()
    page.locator("#cancel-job").click()
    expect(page.locator("#view")).to_have_attribute("data-job-status", "cancelled")
    expect(page.locator(".job-status .badge")).to_have_text("cancelled")
    expect(page.locator("#cancel-job")).to_be_disabled()
    expect(page.locator("#pause-job")).to_be_disabled()
    expect(page.locator(".event-log")).to_contain_text("Fine-tuning job cancelled")


def test_compare_two_jobs(page: Page, state: dict[str, Any]):
    open_view(page, "#/jobs")
    for job_id in (state["job_id"], state["long_job_id"]):
        page.get_by_label(f"Select {job_id} to compare").check()
    page.get_by_role("button", name="Compare selected").click()
    expect(page.get_by_role("heading", name="Compare jobs")).to_be_visible()
    chart = page.locator("#compare-chart")
    # Two training curves plus the first job's validation curve.
    expect(chart).to_have_attribute("data-series", "3")
    assert int(chart.get_attribute("data-points")) > 20
    table = page.locator("#compare-settings table")
    for job_id in (state["job_id"], state["long_job_id"]):
        expect(table.locator("thead")).to_contain_text(job_id)
    expect(table).to_contain_text("LoRA r8")
    expect(table).to_contain_text("DoRA r8")
    shot(page, "compare.png")

    # Unticking one in the picker leaves too few to compare.
    page.locator(f"#pick-{state['long_job_id']}").uncheck()
    expect(page.locator("#view")).to_contain_text("Select at least two jobs")
    expect(chart).to_have_attribute("data-series", "2")


def test_failed_job_says_what_to_do(page: Page, state: dict[str, Any]):
    """The help under "Why it failed" is the server's text for the job's error code."""
    body = {
        "model": "tiny-random-llama",
        "training_file": state["file_id"],
        "hyperparameters": {"n_epochs": 50, "batch_size": 1},
        "max_run_seconds": 6,
    }
    created = page.evaluate(
        """async (body) => {
        const token = document.querySelector('meta[name="csrf-token"]').content;
        const r = await fetch('/v1/fine_tuning/jobs', {method: 'POST', body: JSON.stringify(body),
            headers: {'Content-Type': 'application/json', 'X-CSRF-Token': token}});
        return [r.status, await r.json()];
    }""",
        body,
    )
    assert created[0] == 200, created
    job_id = created[1]["id"]
    open_view(page, f"#/jobs/{job_id}")
    expect(page.locator("#view")).to_have_attribute(
        "data-job-status", "failed", timeout=JOB_TIMEOUT_MS
    )
    failure = page.locator("#job-error")
    expect(failure.get_by_role("heading")).to_have_text("Why it failed")
    expect(failure.locator(".failure-help")).to_have_text(
        FAILURE_HELP[FailureCode.MAX_RUN_TIME_EXCEEDED]
    )
    expect(failure).to_contain_text("max_run_time_exceeded: ")
    expect(failure.locator("code")).to_have_text("max_run_seconds")
    expect(page.locator("#resume-job")).to_be_disabled()
    expect(page.locator("#cancel-job")).to_be_disabled()


def test_phone_width_and_delete_file(page: Page, state: dict[str, Any]):
    page.set_viewport_size({"width": 390, "height": 844})
    open_view(page, "#/jobs")
    expect(page.locator(f"tr[data-job-id='{state['job_id']}']")).to_be_visible()
    overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0, f"the page scrolls sideways by {overflow}px at phone width"
    shot(page, "jobs-list-phone.png")
    page.set_viewport_size({"width": 1280, "height": 900})

    open_view(page, "#/files")
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name=re.compile(rf"Delete .*{state['file_id']}")).click()
    expect(page.locator(f"tr[data-file-id='{state['file_id']}']")).to_have_count(0)
    expect(page.locator("#files-list")).to_contain_text("fine-tune-results")  # job metrics


def test_sign_out(page: Page):
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_label("API key")).to_be_visible()
    assert page.evaluate("async () => (await fetch('/v1/models')).status") == 401
