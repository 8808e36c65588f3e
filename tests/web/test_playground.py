"""The playground and the expected finish, in a real browser against the running platform.

Two jobs on the example pirate data: a tiny LoRA of many short steps (the ETA, the pause and
resume buttons, the playground's compare mode) and the real SmolLM2 as a DoRA (``slow``: it
learns to answer "Arr! ..." in about two minutes on a CPU). The steps run in file order and
share one signed-in page, as a user's session would.

The platform renews leases only every 150 s (``DORADO_LEASE_SECONDS=600``), so an expected
finish seen in a job's first seconds can only have come with its metrics events.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from openai import OpenAI
from playwright.sync_api import Page, expect

from tests.conftest import EXAMPLES, MODEL_CACHE, ROOT
from tests.e2e.flow import client_for, wait_for_job
from tests.e2e.platform import Platform
from tests.web.conftest import open_page

API_KEY = "dor-web-playground-key-000000"
LEASE_SECONDS = 600
CHAT_CAP = 200  # DORADO_CHAT_MAX_TOKENS, not the default: the form must learn it from the server
LEASE_RENEWAL_S = LEASE_SECONDS / 4  # worker/reporting.py renews every quarter lease
SMOL = "smollm2-135m-instruct"
TINY = "tiny-random-llama"
HELD_OUT = "What is the capital of France?"  # not in examples/pirate.jsonl
SCREENSHOT = ROOT / "docs" / "screenshots" / "playground.png"
# A test's time includes waiting for its job, and the worker trains one job at a time.
pytestmark = pytest.mark.timeout(1800)


@pytest.fixture(scope="module")
def platform(tmp_path_factory) -> Iterator[Platform]:
    home = tmp_path_factory.mktemp("playground-platform") / "home"
    env = {"DORADO_LEASE_SECONDS": str(LEASE_SECONDS), "DORADO_CHAT_MAX_TOKENS": str(CHAT_CAP)}
    running = Platform(home, API_KEY, MODEL_CACHE, env).start()
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def state() -> dict[str, Any]:
    """What earlier steps found, for later steps."""
    return {}


@pytest.fixture(scope="module")
def client(platform: Platform) -> OpenAI:
    return client_for(platform)


@pytest.fixture(scope="module")
def jobs(client: OpenAI, request) -> dict[str, str]:
    """The tiny job, then (when a slow test runs) the SmolLM2 one: submitted together, so
    SmolLM2 trains while the tiny job's steps are checked."""
    training = client.files.create(file=open(EXAMPLES / "pirate.jsonl", "rb"), purpose="fine-tune")
    ids = {
        "tiny": client.fine_tuning.jobs.create(
            model=TINY,
            training_file=training.id,
            hyperparameters={"n_epochs": 6, "batch_size": 1},  # 312 short steps
            suffix="eta",
            extra_body={"adapter": {"type": "lora", "r": 8, "alpha": 16}},
        ).id
    }
    if any(
        item.get_closest_marker("slow")
        for item in request.session.items
        if item.module is request.module
    ):
        ids["pirate"] = client.fine_tuning.jobs.create(
            model=SMOL, training_file=training.id, suffix="pirate"
        ).id
    return ids


@pytest.fixture(scope="module")
def page(browser, platform: Platform) -> Iterator[Page]:
    with open_page(browser, platform) as opened:
        opened.goto("/")
        opened.get_by_label("API key").fill(API_KEY)
        opened.get_by_role("button", name="Sign in").click()
        expect(opened.get_by_role("heading", name="Fine-tuning jobs")).to_be_visible()
        yield opened


def open_view(page: Page, hash_path: str) -> None:
    page.evaluate("h => { window.location.hash = h; }", hash_path)


def first_estimate(client: OpenAI, job_id: str, timeout: float) -> dict[str, Any]:
    """Polls the job until it runs with an expected finish: when, how far and what it said."""
    deadline = time.monotonic() + timeout
    running_since = None
    while time.monotonic() < deadline:
        job = client.fine_tuning.jobs.retrieve(job_id)
        if job.status == "running" and running_since is None:
            running_since = time.monotonic()
        if job.status == "running" and job.estimated_finish:
            return {
                "seen_at": time.time(),
                "running_for": time.monotonic() - running_since,
                "estimated_finish": job.estimated_finish,
                "progress": job.model_extra.get("progress"),
            }
        assert job.status in ("validating_files", "queued", "running"), job
        time.sleep(0.2)
    raise TimeoutError(f"job {job_id} showed no expected finish in {timeout} s")


def test_expected_finish_from_the_first_steps(
    page: Page, client: OpenAI, jobs: dict[str, str], state: dict[str, Any]
):
    job_id = jobs["tiny"]
    open_view(page, f"#/jobs/{job_id}")
    seen = first_estimate(client, job_id, timeout=900)
    # Set long before the first lease renewal could have carried it.
    assert seen["running_for"] < min(30, LEASE_RENEWAL_S), seen
    assert seen["progress"] is None or seen["progress"]["step"] <= 50, seen
    left = seen["estimated_finish"] - seen["seen_at"]
    assert 0 < left < 600, seen  # in the future, and not absurd for a tiny model
    state["eta"] = seen

    # The job page and the list show it while the job runs.
    expect(page.locator(".job-progress .progress-text")).to_contain_text(
        re.compile(r"ETA .*left\)"), timeout=20_000
    )
    open_view(page, "#/jobs")
    row = page.locator(f"tr[data-job-id='{job_id}']")
    expect(row.locator(".progress-text")).to_contain_text("ETA")


def test_pause_and_resume_buttons(
    page: Page, client: OpenAI, platform: Platform, jobs: dict[str, str]
):
    job_id = jobs["tiny"]
    open_view(page, f"#/jobs/{job_id}")
    view = page.locator("#view")
    expect(view).to_have_attribute("data-job-status", "running")
    page.locator("#pause-job").click()
    expect(page.locator(".action-message")).to_have_text("Pause requested.")
    expect(view).to_have_attribute("data-job-status", "paused", timeout=60_000)
    expect(page.locator("#resume-job")).to_be_enabled()
    expect(page.locator("#pause-job")).to_be_disabled()
    paused = page.locator(".event-log li").filter(has_text=re.compile(r"paused at step \d+"))
    expect(paused).to_have_count(1)
    paused_at = int(re.search(r"paused at step (\d+)", paused.inner_text()).group(1))
    assert 0 < paused_at < 312

    page.locator("#resume-job").click()
    expect(page.locator(".action-message")).to_have_text("Job resumed.")
    expect(view).not_to_have_attribute("data-job-status", "paused")
    # The new attempt starts from the pause checkpoint, and estimates afresh from its steps.
    seen = first_estimate(client, job_id, timeout=900)
    done = wait_for_job(client, job_id, 900, platform)
    assert done.status == "succeeded", done
    left, actual = seen["estimated_finish"] - seen["seen_at"], done.finished_at - seen["seen_at"]
    assert actual / 4 - 5 <= left <= actual * 4 + 5, (seen, done.finished_at)
    expect(view).to_have_attribute("data-job-status", "succeeded", timeout=20_000)
    expect(page.locator(".event-log")).to_contain_text(f"Resumed from step {paused_at}")


def test_job_page_says_where_the_adapter_loads(page: Page, jobs: dict[str, str]):
    open_view(page, f"#/jobs/{jobs['tiny']}")
    expect(page.locator("#serving")).to_have_text("PEFT, Dorado, vLLM, LoRAX")  # a LoRA
    expect(page.locator("#training-tokens")).to_have_text(re.compile(r"^[\d,]+$"))
    open_view(page, "#/files")
    tokens = page.locator(f"tr[data-file-id] .file-tokens[data-model='{TINY}']")
    expect(tokens).to_contain_text(f"({TINY})")


def test_playground_reports_errors_in_words(page: Page):
    open_view(page, f"#/playground?model={TINY}")
    expect(page.get_by_role("heading", name="Playground")).to_be_visible()
    expect(page.locator("#pg-left")).to_be_hidden()  # a base model has nothing to compare
    page.get_by_label("Prompt", exact=True).fill("word " * 3000)
    page.get_by_role("button", name="Run").click()
    right = page.locator("#pg-right")
    expect(right).to_have_attribute("data-state", "error", timeout=60_000)
    expect(right).to_have_attribute("data-error-code", "context_length_exceeded")
    expect(right.get_by_role("alert")).to_contain_text("The prompt is too long for this model")


def test_playground_max_tokens_is_the_servers_cap(page: Page, client: OpenAI):
    open_view(page, "#/jobs")  # a fresh playground form
    expect(page.get_by_role("heading", name="Fine-tuning jobs")).to_be_visible()
    open_view(page, f"#/playground?model={TINY}")
    field = page.get_by_label("Max tokens")
    expect(field).to_have_attribute("max", str(CHAT_CAP))
    # The server refuses more than its cap (a 400 naming it) ...
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(
            model=TINY, messages=[{"role": "user", "content": "Hi"}], max_tokens=CHAT_CAP + 1
        )
    assert refused.value.code == "invalid_value" and f"at most {CHAT_CAP}" in str(refused.value)
    # ... so the form never sends it: the browser holds the run back.
    field.fill(str(CHAT_CAP + 1))
    page.get_by_label("Prompt", exact=True).fill("Hi")
    page.get_by_role("button", name="Run").click()
    assert field.evaluate("input => input.validity.rangeOverflow")
    expect(page.locator("#pg-right")).to_have_attribute("data-state", "idle")
    field.fill(str(CHAT_CAP))
    assert field.evaluate("input => input.checkValidity()")


@pytest.mark.slow
def test_playground_pirate_against_its_base(
    page: Page, client: OpenAI, platform: Platform, jobs: dict[str, str], state: dict[str, Any]
):
    pirate = wait_for_job(client, jobs["pirate"], 1200, platform)
    assert pirate.status == "succeeded", platform.log_tail()
    state["pirate_model"] = pirate.fine_tuned_model
    open_view(page, f"#/jobs/{pirate.id}")
    expect(page.locator("#serving")).to_have_text(
        "PEFT, Dorado, vLLM (merged), LoRAX (merged)"  # a DoRA
    )
    page.get_by_role("link", name="Try it").click()
    expect(page.get_by_role("heading", name="Playground")).to_be_visible()
    expect(page.get_by_label("Model", exact=True)).to_have_value(pirate.fine_tuned_model)
    left, right = page.locator("#pg-left"), page.locator("#pg-right")
    expect(left.get_by_role("heading")).to_have_text("Base model")
    expect(left.locator(".pg-model")).to_have_text(SMOL)
    expect(right.get_by_role("heading")).to_have_text("Fine-tuned model")

    page.get_by_label("Prompt", exact=True).fill(HELD_OUT)
    page.get_by_label("Temperature").fill("0")
    page.get_by_label("Max tokens").fill("24")
    page.get_by_role("button", name="Run").click()
    for pane in (left, right):
        expect(pane).to_have_attribute("data-state", "done", timeout=300_000)
        assert int(pane.get_attribute("data-chunks")) > 1  # streamed, piece by piece
        expect(pane.locator(".pg-stats")).to_contain_text(
            re.compile(r"\d+ prompt tokens · \d+ answer tokens · first token after [\d.]+ s")
        )
    base_answer = left.locator(".pg-text").inner_text()
    tuned_answer = right.locator(".pg-text").inner_text()
    assert tuned_answer.startswith("Arr"), tuned_answer
    assert not base_answer.startswith("Arr") and "Paris" in base_answer, base_answer
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOT), full_page=True)


@pytest.mark.slow
def test_playground_compares_two_fine_tuned_models(
    page: Page, client: OpenAI, jobs: dict[str, str], state: dict[str, Any]
):
    tiny = client.fine_tuning.jobs.retrieve(jobs["tiny"])
    open_view(page, "#/playground?" + f"model={state['pirate_model']}")
    page.get_by_label("Compare with").select_option(tiny.fine_tuned_model)
    left, right = page.locator("#pg-left"), page.locator("#pg-right")
    expect(left.get_by_role("heading")).to_have_text("Fine-tuned model A")
    expect(right.get_by_role("heading")).to_have_text("Fine-tuned model B")
    assert "against=" in page.url  # the comparison can be shared as a link
    page.get_by_label("Max tokens").fill("6")
    page.get_by_role("button", name="Run").click()
    for pane, model in ((left, tiny.fine_tuned_model), (right, state["pirate_model"])):
        expect(pane).to_have_attribute("data-state", "done", timeout=300_000)
        expect(pane.locator(".pg-model")).to_have_text(model)
