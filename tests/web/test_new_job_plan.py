"""The new-job form shows the memory planner's answer as it is filled, and reaches the training
options, in a real browser against a running platform whose one pool has 16 GiB GPUs: base
quantization and precision are sent as the API takes them (defaults left out), NF4 lowers the
planned peak, a job that fits no GPU shows the API's refusal and cannot be submitted, hosts
(nodes) spread the plan over the GPUs of that many workers, and the created job has the chosen
settings."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from playwright.sync_api import Page, expect

from tests.conftest import MODEL_CACHE, ROOT
from tests.e2e.platform import Platform
from tests.web.conftest import WEB_API_KEY, open_page, sign_in, upload_example

SCREENSHOT = ROOT / "docs" / "screenshots" / "new-job.png"
POOL_MIB = 16384  # every pool sized: a job that fits no GPU is refused, not sent to "default"
SMALL_MODEL = "smollm2-135m-instruct"  # sized by the planner; its weights are never loaded here
TINY_MODEL = "tiny-random-llama"


@pytest.fixture(scope="module")
def platform(tmp_path_factory) -> Iterator[Platform]:
    """The platform with DORADO_POOLS naming the default pool's GPU memory."""
    home = tmp_path_factory.mktemp("web-plan-platform") / "home"
    env = {"DORADO_LEASE_SECONDS": "20", "DORADO_POOLS": f"default={POOL_MIB}"}
    running = Platform(home, WEB_API_KEY, MODEL_CACHE, env).start()
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def page(browser, platform: Platform) -> Iterator[Page]:
    with open_page(browser, platform) as opened:
        sign_in(opened)
        yield opened


@pytest.fixture(scope="module")
def file_id(platform: Platform) -> str:
    return upload_example(platform, "pirate.jsonl")


def _api_estimate(platform: Platform, body: dict[str, Any]) -> requests.Response:
    return requests.post(
        f"{platform.base_url}/fine_tuning/jobs/estimate",
        json=body,
        headers=platform.headers(),
        timeout=30,
    )


def _open_form(page: Page) -> None:
    """A fresh form: by way of the jobs list, since the same hash again would not re-render."""
    page.evaluate("() => { window.location.hash = '#/jobs'; }")
    expect(page.get_by_role("heading", name="Fine-tuning jobs")).to_be_visible()
    page.evaluate("() => { window.location.hash = '#/new'; }")
    expect(page.get_by_role("heading", name="New fine-tuning job")).to_be_visible()


def test_the_plan_follows_the_form_and_a_refusal_blocks_submit(
    page: Page, platform: Platform, file_id: str
):
    _open_form(page)
    estimate = page.locator("#estimate")
    submit = page.get_by_role("button", name="Start fine-tuning")
    expect(page.locator(f"#training-file option[value='{file_id}']")).to_have_count(1)
    page.get_by_label("Base model").select_option(SMALL_MODEL)
    with page.expect_request(re.compile(r"/jobs/estimate$")) as sent:
        page.get_by_label("Training file", exact=True).select_option(file_id)
    body = sent.value.post_data_json
    # Left at their defaults, the new settings are not sent at all.
    assert not {"training", "precision", "pool", "nodes"} & body.keys(), body
    assert "quantization" not in body["adapter"], body

    expect(estimate).to_have_attribute("data-quantization", "none")
    full = _api_estimate(platform, body).json()["resources"]
    expect(estimate).to_have_attribute("data-peak-mib", str(full["estimated_peak_mib_per_device"]))
    expect(estimate).to_have_attribute("data-gpus", "1")
    expect(estimate).to_have_attribute("data-pool", "default")
    plan = page.locator("#memory-plan")
    expect(plan).to_contain_text(f"{full['estimated_peak_mib_per_device']:,} MiB per GPU")
    expect(plan).to_contain_text(f"GPUs of {POOL_MIB:,} MiB")
    expect(plan).to_contain_text("1 in pool default")
    expect(estimate).to_have_attribute("data-nodes", "1")
    expect(plan).not_to_contain_text("hosts")

    page.get_by_label("Base quantization").select_option("nf4")
    expect(estimate).to_have_attribute("data-quantization", "nf4")
    nf4_peak = int(estimate.get_attribute("data-peak-mib"))
    assert nf4_peak < full["estimated_peak_mib_per_device"]
    expect(plan).to_contain_text("NF4 (4-bit)")
    expect(plan).to_contain_text(f"{nf4_peak:,} MiB per GPU")
    expect(submit).to_be_enabled()

    # A sequence length no 16 GiB GPU holds: the API's 400 (with what would fit) is shown
    # inline and the job cannot be submitted.
    with page.expect_response(re.compile(r"/jobs/estimate$")) as answered:
        page.get_by_label("Max sequence length").fill("32768")
    refused = _api_estimate(platform, answered.value.request.post_data_json)
    assert refused.status_code == 400, refused.text
    error = refused.json()["error"]
    assert error["code"] == "job_too_large", error
    expect(estimate).to_have_attribute("data-refused", "true")
    expect(estimate.get_by_role("alert")).to_contain_text(error["message"])
    expect(estimate).to_contain_text("This job would be refused")
    expect(submit).to_be_disabled()
    expect(page.locator("#create-job-hint")).to_be_visible()

    page.get_by_label("Max sequence length").fill("")
    expect(estimate).to_have_attribute("data-peak-mib", str(nf4_peak))
    expect(submit).to_be_enabled()
    expect(page.locator("#create-job-hint")).to_be_hidden()

    # int8 takes a LoRA adapter: the API says so for DoRA, and LoRA clears it.
    page.get_by_label("Base quantization").select_option("int8")
    expect(estimate.get_by_role("alert")).to_contain_text('quantization "nf4" or null')
    expect(submit).to_be_disabled()
    page.get_by_label("LoRA", exact=True).check()
    expect(estimate).to_have_attribute("data-quantization", "int8")
    expect(submit).to_be_enabled()


def test_hosts_spread_the_plan_and_a_count_out_of_range_is_refused(
    page: Page, platform: Platform, file_id: str
):
    _open_form(page)
    estimate = page.locator("#estimate")
    plan = page.locator("#memory-plan")
    submit = page.get_by_role("button", name="Start fine-tuning")
    page.get_by_label("Base model").select_option(SMALL_MODEL)
    page.get_by_label("Training file", exact=True).select_option(file_id)
    expect(estimate).to_have_attribute("data-gpus", "1")
    page.get_by_text("Advanced training options").click()
    hosts = page.get_by_label("Hosts (nodes)")

    with page.expect_request(re.compile(r"/jobs/estimate$")) as sent:
        hosts.fill("2")
    body = sent.value.post_data_json
    assert body["nodes"] == 2, body
    planned = _api_estimate(platform, body).json()["resources"]
    assert (planned["nodes"], planned["gpus"]) == (2, 2), planned
    expect(estimate).to_have_attribute("data-nodes", "2")
    expect(estimate).to_have_attribute("data-gpus", "2")
    expect(plan).to_contain_text("2 on 2 hosts in pool default")
    expect(submit).to_be_enabled()

    # More hosts than a job may ask for: the API's 400 is shown and blocks submit.
    with page.expect_response(re.compile(r"/jobs/estimate$")) as answered:
        hosts.fill("65")
    assert answered.value.request.post_data_json["nodes"] == 65
    refused = _api_estimate(platform, answered.value.request.post_data_json)
    assert refused.status_code == 400, refused.text
    assert refused.json()["error"]["param"] == "nodes", refused.text
    expect(estimate).to_have_attribute("data-refused", "true")
    expect(estimate.get_by_role("alert")).to_contain_text(refused.json()["error"]["message"])
    expect(submit).to_be_disabled()

    # Emptied, the field is not sent: one host again.
    with page.expect_request(re.compile(r"/jobs/estimate$")) as sent:
        hosts.fill("")
    assert "nodes" not in sent.value.post_data_json
    expect(estimate).to_have_attribute("data-nodes", "1")
    expect(plan).to_contain_text("1 in pool default")
    expect(submit).to_be_enabled()


def test_the_form_creates_a_job_with_the_chosen_options(
    page: Page, platform: Platform, file_id: str
):
    _open_form(page)
    estimate = page.locator("#estimate")
    page.get_by_label("Training file", exact=True).select_option(file_id)
    page.get_by_label("Base model").select_option(TINY_MODEL)
    page.get_by_label("Base quantization").select_option("nf4")
    page.get_by_label("Epochs").fill("1")
    advanced = page.locator("#advanced-options")
    expect(page.get_by_label("Warmup ratio")).to_be_hidden()  # collapsed until opened
    advanced.get_by_text("Advanced training options").click()
    page.get_by_label("Precision").select_option("fp32")
    page.get_by_label("Warmup ratio").fill("0.1")
    page.get_by_label("Weight decay").fill("0.01")
    page.get_by_label("Learning-rate schedule").select_option("cosine")
    page.get_by_label("Gradient checkpointing").select_option("true")
    page.get_by_label("Micro-batch tokens").fill("4096")
    page.get_by_label("Hosts (nodes)").fill("2")
    expect(estimate).to_have_attribute("data-nodes", "2")
    expect(estimate).to_have_attribute("data-checkpointing", "true")
    expect(page.locator("#memory-plan")).to_contain_text("on (as asked)")
    expect(estimate).to_contain_text("cosine schedule, warmup 0.1, weight decay 0.01")
    expect(estimate).to_contain_text("micro-batches of 4,096 tokens")

    page.get_by_role("button", name="Start fine-tuning").click()
    page.wait_for_url(re.compile(r"#/jobs/ftjob-"))
    job_id = page.url.rsplit("/", 1)[-1]
    url = f"{platform.base_url}/fine_tuning/jobs/{job_id}"
    job = requests.get(url, headers=platform.headers(), timeout=30).json()
    # What it trains is not this test's concern (on two hosts, it waits for a second worker).
    requests.post(f"{url}/cancel", headers=platform.headers(), timeout=30)
    assert job["model"] == TINY_MODEL
    assert job["adapter"]["quantization"] == "nf4"
    assert job["options"]["precision"] == "fp32"
    assert job["options"]["nodes"] == 2, job["options"]
    assert job["resources"]["nodes"] == 2, job["resources"]
    expected = {
        "warmup_ratio": 0.1,
        "weight_decay": 0.01,
        "lr_scheduler": "cosine",
        "gradient_checkpointing": True,
        "micro_batch_tokens": 4096,
    }
    assert {k: job["options"][k] for k in expected} == expected, job["options"]
    assert job["resources"]["quantization"] == "nf4"
    assert job["resources"]["gradient_checkpointing"] is True


def test_the_form_fits_a_narrow_screen(page: Page, file_id: str):
    """Last: a full-page screenshot leaves later clicks of the page misplaced."""
    _open_form(page)
    page.get_by_label("Training file", exact=True).select_option(file_id)
    page.get_by_label("Base model").select_option(SMALL_MODEL)
    page.get_by_label("Base quantization").select_option("nf4")
    page.get_by_text("Advanced training options").click()
    expect(page.locator("#estimate")).to_have_attribute("data-quantization", "nf4")
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOT), full_page=True)

    page.set_viewport_size({"width": 360, "height": 800})
    try:
        expect(page.get_by_label("Hosts (nodes)")).to_be_visible()
        expect(page.locator("#memory-plan")).to_be_visible()
        overflow = page.evaluate(
            "() => document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        assert overflow <= 0, f"the page scrolls sideways by {overflow} px at 360 px"
    finally:
        page.set_viewport_size({"width": 1280, "height": 900})
