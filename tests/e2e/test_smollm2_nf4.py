"""QDoRA end to end: SmolLM2 on an NF4 base (``adapter.quantization = "nf4"``) learns the pirate
style through the platform, and the inference process serves the tuned model on the base
quantized the same way (slow: minutes on a 2-core CPU)."""

from __future__ import annotations

import pytest

from tests.conftest import EXAMPLES, MODEL_CACHE
from tests.e2e.flow import client_for, metrics_events, wait_for_job
from tests.e2e.platform import Platform

pytest.importorskip("bitsandbytes")

HELD_OUT = "What is the capital of France?"  # not in examples/pirate.jsonl


def _answer(client, model: str) -> str:
    reply = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": HELD_OUT}],
        temperature=0,
        max_tokens=24,
    )
    return reply.choices[0].message.content or ""


@pytest.mark.slow
@pytest.mark.timeout(1800)  # minutes when quiet; a shared 2-core machine can triple that
def test_smollm2_in_nf4_learns_pirate_speak_and_is_served_quantized(tmp_path) -> None:
    assert HELD_OUT not in (EXAMPLES / "pirate.jsonl").read_text()
    platform = Platform(tmp_path / "home", "dor-e2e-smollm2-nf4-key-0000", MODEL_CACHE).start()
    try:
        client = client_for(platform)
        with open(EXAMPLES / "pirate.jsonl", "rb") as data:
            training = client.files.create(file=data, purpose="fine-tune")
        job = client.fine_tuning.jobs.create(
            model="smollm2-135m-instruct",
            training_file=training.id,
            # As short as it can be and still show learning: 2 epochs (22 steps) at twice the
            # base rate instead of the 3 epochs "auto" picks for 52 examples.
            hyperparameters={"n_epochs": 2, "learning_rate_multiplier": 2.0},
            extra_body={"adapter": {"type": "dora", "quantization": "nf4"}},
        )
        assert job.model_extra["adapter"]["quantization"] == "nf4"
        job = wait_for_job(client, job.id, 1800, platform)
        assert job.status == "succeeded", platform.log_tail()
        losses = [e.data["train_loss"] for e in metrics_events(client, job.id)]
        first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
        assert last < 0.6 * first, losses

        before = _answer(client, "smollm2-135m-instruct")
        after = _answer(client, job.fine_tuned_model)
        assert "Paris" in before and not before.startswith("Arr"), before
        assert after.startswith("Arr"), after
        # Served on the base quantized as it was trained (its record left the worker with it).
        log = platform.log_path.read_text(errors="replace")
        assert f"adapter {job.id} attached to smollm2-135m-instruct@nf4" in log
    finally:
        platform.stop()
