"""DPO through the official openai SDK on a real API and worker (tiny model): create, follow,
download; then the SFT -> DPO chain through an ``ft:`` model."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import pytest
from openai import OpenAI

from tests.conftest import EXAMPLES
from tests.e2e.flow import (
    adapter_summary,
    client_for,
    download_adapter,
    metrics_events,
    wait_for_job,
)
from tests.e2e.platform import Platform
from tests.e2e.test_openai_sdk import assert_complete

PIRATE = (EXAMPLES / "pirate.jsonl").read_bytes()
PLAIN = "I am not sure, but I think it is something I cannot answer well."
DPO_KEYS = {
    "train_chosen_reward",
    "train_rejected_reward",
    "train_reward_margin",
    "train_preference_accuracy",
}


def preference_bytes(lines: list[bytes]) -> bytes:
    rows = []
    for line in lines:
        messages = json.loads(line)["messages"]
        rows.append(
            {
                "input": {"messages": messages[:-1]},
                "preferred_output": [messages[-1]],
                "non_preferred_output": [{"role": "assistant", "content": PLAIN}],
            }
        )
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def upload(client: OpenAI, data: bytes, name: str):
    return client.files.create(file=(name, io.BytesIO(data)), purpose="fine-tune")


@pytest.fixture(scope="module")
def client(platform: Platform) -> OpenAI:
    return client_for(platform)


@pytest.fixture(scope="module")
def preference_files(client: OpenAI):
    lines = PIRATE.splitlines()
    training = upload(client, preference_bytes(lines[:24]), "pref.jsonl")
    validation = upload(client, preference_bytes(lines[24:36]), "pref-valid.jsonl")
    return training, validation


def test_dpo_job_created_followed_and_downloaded(
    client: OpenAI, platform: Platform, preference_files, tmp_path: Path
):
    training, validation = preference_files
    assert_complete(training)
    assert training.model_extra["statistics"]["format"] == "preference"
    job = client.fine_tuning.jobs.create(
        model="tiny-random-llama",
        training_file=training.id,
        validation_file=validation.id,
        method={
            "type": "dpo",
            "dpo": {"hyperparameters": {"beta": 0.2, "n_epochs": 2, "batch_size": "auto"}},
        },
        suffix="dpo",
        extra_body={"adapter": {"type": "dora", "r": 4}},
    )
    assert_complete(job)
    assert job.method.type == "dpo" and job.method.supervised is None
    hyper = job.method.dpo.hyperparameters
    assert (hyper.beta, hyper.n_epochs, hyper.batch_size) == (0.2, 2, 2)
    assert hyper.learning_rate_multiplier == 1.0
    assert "method" in job.model_dump(exclude_unset=True)
    assert set(job.model_dump(exclude_unset=True)["method"]) == {"type", "dpo"}

    done = wait_for_job(client, job.id, timeout=300, platform=platform)
    assert done.status == "succeeded", done.error
    assert_complete(done)
    assert done.fine_tuned_model == f"ft:tiny-random-llama:default:dpo:{job.id[-8:]}"
    assert done.method.dpo.hyperparameters.beta == 0.2

    metrics = metrics_events(client, job.id)
    assert metrics and all(DPO_KEYS <= set(e.data) for e in metrics)
    last = metrics[-1].data
    assert last["step"] == last["total_steps"] == 24  # 24 pairs / batch 2 x 2 epochs
    assert last["valid_loss"] is not None and last["valid_reward_margin"] is not None
    assert last["full_valid_preference_accuracy"] is not None
    assert "reward margin=" in metrics[-1].message

    checkpoints = list(client.fine_tuning.jobs.checkpoints.list(job.id))
    assert [c.step_number for c in checkpoints] == [24, 12]
    for ckpt in checkpoints:
        assert_complete(ckpt)
        assert ckpt.metrics.model_extra["train_reward_margin"] is not None

    csv_text = client.files.content(done.result_files[0]).text
    header = csv_text.splitlines()[0].split(",")
    assert header[:5] == [
        "step",
        "train_loss",
        "train_accuracy",
        "valid_loss",
        "valid_mean_token_accuracy",
    ]
    assert {"train_reward_margin", "valid_preference_accuracy"} <= set(header)
    assert len(csv_text.splitlines()) == 1 + 24

    adapter = download_adapter(platform, job.id, tmp_path / "adapter")
    config, keys = adapter_summary(adapter)
    assert config["use_dora"] is True and config["r"] == 4
    assert any("lora_magnitude_vector" in k for k in keys)


def test_sft_then_dpo_through_the_ft_model(client: OpenAI, platform: Platform, preference_files):
    chat = upload(client, PIRATE, "chat.jsonl")
    sft = client.fine_tuning.jobs.create(
        model="tiny-random-llama",
        training_file=chat.id,
        hyperparameters={"n_epochs": 1, "batch_size": 8},
        suffix="sft",
        extra_body={"adapter": {"type": "lora", "r": 4}},
    )
    sft_done = wait_for_job(client, sft.id, timeout=300, platform=platform)
    assert sft_done.status == "succeeded", sft_done.error
    assert sft_done.model_extra["parent"] is None

    training, _ = preference_files
    dpo = client.fine_tuning.jobs.create(
        model=sft_done.fine_tuned_model,
        training_file=training.id,
        method={"type": "dpo", "dpo": {"hyperparameters": {"n_epochs": 1}}},
        suffix="sft-dpo",
    )
    assert dpo.model == "tiny-random-llama"
    assert dpo.model_extra["parent"] == sft_done.fine_tuned_model
    assert dpo.model_extra["adapter"]["type"] == "lora" and dpo.model_extra["adapter"]["r"] == 4
    done = wait_for_job(client, dpo.id, timeout=300, platform=platform)
    assert done.status == "succeeded", done.error
    assert done.fine_tuned_model == f"ft:tiny-random-llama:default:sft-dpo:{dpo.id[-8:]}"
    assert done.model_extra["parent"] == sft_done.fine_tuned_model
    # The reference is the policy the job starts from, the SFT model: step 1 (the starting
    # weights) scores rewards 0 and loss ln 2. That the adapter and the reference are the
    # parent's own is checked in tests/worker/test_dpo.py.
    first = metrics_events(client, dpo.id)[0].data
    assert first["step"] == 1 and abs(first["train_reward_margin"]) < 1e-4
    assert first["train_loss"] == pytest.approx(math.log(2), abs=1e-4)
