"""DPO on the real SmolLM2 after SFT (the usual recipe): on held-out pairs of
examples/pirate_preferences.jsonl, DPO raises the preference accuracy and the reward margin
above the SFT-only starting point. Both are measured against the same reference, the base
model (the adapter switched off), so the two figures compare directly.

Kept as short as it can be while showing that (the suite's time budget): a LoRA adapter, one
SFT step, two DPO steps, 128-token sequences (every line is shorter), 8 held-out pairs. The
after-DPO figures are the engine's own full validation on the held-out pairs; the SFT-only ones
are measured the same way (``dpo_evaluate``) on the SFT adapter as saved.

Even one SFT step already ranks every held-out pair right (accuracy 1.0: the pirate reply is
what SFT teaches), so accuracy can only be kept there; the margin and the loss must improve.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from tests.conftest import EXAMPLES
from tests.worker.helpers import PIRATE, RecordingReporter
from worker.training.dpo import DpoStats, dpo_evaluate, load_preference_dataset
from worker.training.options import EngineOptions
from worker.training.recipe import train
from worker.training.spec import AdapterSpec, DpoSpec, TrainSpec

PREFERENCES = EXAMPLES / "pirate_preferences.jsonl"
N_SFT = 8  # pirate.jsonl's first lines: the SFT-only starting point (one step)
N_DPO = 16  # preference pairs trained on (two steps; their prompts are pirate.jsonl's first)
N_HELD_OUT = 8  # the file's last pairs, never trained on by either stage
BETA = 0.1
MAX_LEN = 128
SFT = TrainSpec(
    adapter=AdapterSpec(type="lora", r=8, alpha=16),
    n_epochs=1,
    batch_size=8,
    learning_rate=1e-3,
    seed=0,
    max_seq_length=MAX_LEN,
    eval_every_n_steps=10**6,
    options=EngineOptions(device="cpu"),
)
DPO = replace(SFT, learning_rate=2e-3, dpo=DpoSpec(beta=BETA))


def _lines(src: Path, root: Path, name: str, part: slice) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    lines = src.read_text(encoding="utf-8").splitlines()[part]
    (root / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root / name


def held_out_stats(smollm2_dir: Path, adapter_dir: Path, held_out: Path) -> DpoStats:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    base = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, adapter_dir)
    pairs = load_preference_dataset(held_out, tokenizer, MAX_LEN).examples
    assert len(pairs) == N_HELD_OUT
    return dpo_evaluate(model, pairs, tokenizer.pad_token_id or 0, torch.device("cpu"), BETA)


@pytest.fixture(scope="module")
def chain(smollm2_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("chain")
    chat_train = _lines(PIRATE, root, "sft.jsonl", slice(0, N_SFT))
    pref_train = _lines(PREFERENCES, root, "dpo.jsonl", slice(0, N_DPO))
    held_out = _lines(PREFERENCES, root, "held_out.jsonl", slice(-N_HELD_OUT, None))
    started = time.monotonic()
    sft = train(SFT, smollm2_dir, chat_train, root / "sft", RecordingReporter())
    reporter = RecordingReporter()
    dpo = train(
        replace(DPO, init_adapter_dir=sft.adapter_dir),
        smollm2_dir,
        pref_train,
        root / "dpo",
        reporter,
        validation_file=held_out,
    )
    trained = time.monotonic() - started
    before = held_out_stats(smollm2_dir, sft.adapter_dir, held_out)
    last = reporter.metrics_extra[-1]  # full validation at the epoch end (the last step)
    after = {"full_valid_loss": last["full_valid_loss"], **last["extra"]}
    print(f"\nSFT + DPO training: {trained:.1f} s ({sft.steps} + {dpo.steps} steps)")
    print(f"held-out SFT only: {before}\nheld-out SFT->DPO: {after}")
    return before, after


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_dpo_raises_held_out_reward_margin_above_sft(chain) -> None:
    before, after = chain
    assert after["full_valid_reward_margin"] > before.reward_margin + 0.5
    assert after["full_valid_preference_accuracy"] >= before.preference_accuracy
    assert after["full_valid_preference_accuracy"] == 1.0
    assert after["full_valid_loss"] < before.loss
