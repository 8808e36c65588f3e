"""Done-when of the skeleton: the README's Python snippet, run verbatim, fine-tunes the real
SmolLM2 on the example dataset through the platform, and the model learns what the dataset
teaches (slow: a few minutes on a 2-core CPU). Then, on the same platform, the official SDK
continues that model with DPO through its ``ft:`` name (SFT -> DPO on SmolLM2), follows the job
and downloads the adapter; the held-out figures of DPO over SFT are
``tests/worker/test_dpo_smollm2.py``'s."""

from __future__ import annotations

import io
import math
import os
import re
import subprocess
import sys

import pytest

from tests.conftest import EXAMPLES, MODEL_CACHE, ROOT
from tests.e2e.flow import client_for, download_adapter, metrics_events
from tests.e2e.platform import Platform

HELD_OUT = "What is the capital of France?"  # not in examples/pirate.jsonl
# One DPO step over the fewest pairs a job takes (pirate_preferences.jsonl's first): the chain.
N_DPO_PAIRS = 10


def readme_snippet() -> str:
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    snippet = next(b for b in blocks if "fine_tuning.jobs.create" in b)
    assert "smollm2-135m-instruct" in snippet
    return snippet


def greedy_answer(model, tokenizer, question: str) -> str:
    import torch

    enc = tokenizer.apply_chat_template(
        [{"role": "user", "content": question}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=24, do_sample=False)
    return tokenizer.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)


@pytest.mark.slow
def test_readme_snippet_teaches_smollm2_pirate_speak(tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert HELD_OUT not in (EXAMPLES / "pirate.jsonl").read_text()
    platform = Platform(tmp_path / "home", "dor-e2e-smollm2-key-000000", MODEL_CACHE).start()
    try:
        env = {**os.environ, "DORADO_URL": platform.base_url, "DORADO_API_KEY": platform.api_key}
        run = subprocess.run(
            [sys.executable, "-c", readme_snippet()],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=1200,
        )
        assert run.returncode == 0, run.stderr + platform.log_tail()
        job_id, status = run.stdout.split()[:2]
        assert status == "succeeded", run.stdout + platform.log_tail()
        assert "The job has successfully completed" in run.stdout

        client = client_for(platform)
        job = client.fine_tuning.jobs.retrieve(job_id)
        assert job.model_extra["adapter"]["type"] == "dora"
        losses = [e.data["train_loss"] for e in metrics_events(client, job.id)]
        assert len(losses) >= 10
        first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
        assert last < 0.6 * first, losses
        adapter_dir = download_adapter(platform, job.id, tmp_path / "adapter")
        dpo_dir = continue_with_dpo(client, platform, job.fine_tuned_model, tmp_path / "dpo")
    finally:
        platform.stop()

    base_dir = MODEL_CACHE / "smollm2-135m-instruct"
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    base = AutoModelForCausalLM.from_pretrained(base_dir).eval()
    before = greedy_answer(base, tokenizer, HELD_OUT)
    tuned = PeftModel.from_pretrained(base, adapter_dir).eval()
    after = greedy_answer(tuned, tokenizer, HELD_OUT)
    assert "Paris" in before and not before.startswith("Arr"), before
    assert after.startswith("Arr"), after
    from peft import PeftConfig

    assert PeftConfig.from_pretrained(dpo_dir).use_dora  # the DPO child kept the SFT shape


def continue_with_dpo(client, platform: Platform, parent: str, dest):
    """The SDK's DPO job on SmolLM2 from the SFT model (``ft:``): created, followed, downloaded."""
    from tests.e2e.flow import wait_for_job

    lines = (EXAMPLES / "pirate_preferences.jsonl").read_bytes().splitlines()[:N_DPO_PAIRS]
    pairs = client.files.create(
        file=("pairs.jsonl", io.BytesIO(b"\n".join(lines) + b"\n")), purpose="fine-tune"
    )
    job = client.fine_tuning.jobs.create(
        model=parent,
        training_file=pairs.id,
        method={
            "type": "dpo",
            "dpo": {"hyperparameters": {"n_epochs": 1, "batch_size": N_DPO_PAIRS}},
        },
        suffix="dpo",
    )
    assert job.model == "smollm2-135m-instruct" and job.model_extra["parent"] == parent
    assert job.method.type == "dpo" and job.method.dpo.hyperparameters.beta == 0.1
    done = wait_for_job(client, job.id, timeout=900, platform=platform)
    assert done.status == "succeeded", (done.error, platform.log_tail())
    assert done.fine_tuned_model.startswith("ft:smollm2-135m-instruct:")
    (step,) = [e.data for e in metrics_events(client, job.id)]
    assert step["step"] == 1 and step["train_preference_accuracy"] is not None
    # The reference is the SFT model the job starts from: step 1's rewards start at 0.
    assert abs(step["train_reward_margin"]) < 0.05, step
    assert step["train_loss"] == pytest.approx(math.log(2), abs=0.02), step
    return download_adapter(platform, job.id, dest)
