"""The new-job form makes a DPO job continuing a fine-tuned model, in a real browser against
the running platform: the ft: model and the method are offered, the adapter is the parent's
(its settings are disabled and not sent), and the estimate counts the pairs."""

from __future__ import annotations

import math
import re
from collections.abc import Iterator

import pytest
import requests
from openai import OpenAI
from playwright.sync_api import Page, expect

from tests.conftest import EXAMPLES
from tests.e2e.flow import client_for, wait_for_job
from tests.e2e.platform import Platform
from tests.web.conftest import open_page, sign_in, upload_example

PARENT_TIMEOUT_S = 120


@pytest.fixture(scope="module")
def page(browser, platform: Platform) -> Iterator[Page]:
    with open_page(browser, platform) as opened:
        sign_in(opened)
        yield opened


@pytest.fixture
def client(platform: Platform) -> Iterator[OpenAI]:
    """Closed after the test: an open keep-alive connection holds the API's shutdown 30 s."""
    opened = client_for(platform)
    try:
        yield opened
    finally:
        opened.close()


def test_form_creates_a_dpo_job_from_a_fine_tuned_model(
    page: Page, platform: Platform, client: OpenAI
):
    chat_id = upload_example(platform, "pirate.jsonl")
    pref_id = upload_example(platform, "pirate_preferences.jsonl")
    sft = client.fine_tuning.jobs.create(
        model="tiny-random-llama",
        training_file=chat_id,
        hyperparameters={"n_epochs": 1, "batch_size": 8},
        extra_body={"adapter": {"type": "lora", "r": 8}},
    )
    parent = wait_for_job(client, sft.id, PARENT_TIMEOUT_S, platform)
    assert parent.status == "succeeded", parent
    ft_model = parent.fine_tuned_model

    page.evaluate("() => { window.location.hash = '#/new'; }")
    expect(page.get_by_role("heading", name="New fine-tuning job")).to_be_visible()
    training = page.get_by_label("Training file", exact=True)
    expect(training.locator(f"option[value='{pref_id}']")).to_contain_text("preference pairs")
    training.select_option(pref_id)
    page.get_by_label("Base model").select_option(ft_model)
    expect(page.get_by_label("Rank (r)")).to_be_disabled()
    expect(page.get_by_label("Base quantization")).to_be_disabled()  # the parent's is kept
    expect(page.get_by_label("DPO beta")).to_be_disabled()
    # A preference file for a supervised job: the estimate says why not.
    estimate = page.locator("#estimate")
    expect(estimate).to_contain_text("preference (DPO) examples")
    page.get_by_label("Method").select_option("dpo")
    page.get_by_label("Epochs").fill("1")
    page.get_by_label("DPO beta").fill("0.2")
    pairs = sum(1 for line in (EXAMPLES / "pirate_preferences.jsonl").open() if line.strip())
    batch = max(1, min(8, round(pairs / 10)))  # "auto", as core.jobs.hyperparams
    expect(estimate).to_have_attribute("data-total-steps", str(math.ceil(pairs / batch)))
    expect(estimate).to_have_attribute("data-method", "dpo")
    expect(estimate).to_contain_text(f"continues {ft_model}")
    expect(estimate).to_contain_text("beta 0.2")

    page.get_by_role("button", name="Start fine-tuning").click()
    page.wait_for_url(re.compile(r"#/jobs/ftjob-"))
    job_id = page.url.rsplit("/", 1)[-1]
    job = requests.get(
        f"{platform.base_url}/fine_tuning/jobs/{job_id}", headers=platform.headers(), timeout=30
    ).json()
    assert (job["parent"], job["parent_job_id"]) == (ft_model, parent.id)
    assert job["model"] == "tiny-random-llama"
    assert (job["adapter"]["type"], job["adapter"]["r"]) == ("lora", 8)
    assert job["method"]["type"] == "dpo"
    assert job["method"]["dpo"]["hyperparameters"]["beta"] == 0.2
    client.fine_tuning.jobs.cancel(job_id)  # what it trains is not this test's concern

    # Back on a base model, the adapter settings are the form's again.
    page.evaluate("() => { window.location.hash = '#/new'; }")
    page.get_by_label("Base model").select_option(ft_model)
    expect(page.get_by_label("Rank (r)")).to_be_disabled()
    page.get_by_label("Base model").select_option("tiny-random-llama")
    expect(page.get_by_label("Rank (r)")).to_be_enabled()
