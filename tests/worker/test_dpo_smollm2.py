"""DPO on the real SmolLM2 after SFT (the usual recipe): on held-out pairs of
examples/pirate_preferences.jsonl, DPO raises the preference accuracy and the reward margin
above the SFT-only starting point. Both are measured against the same reference, the base
model (the adapter switched off), so the two figures compare directly."""

from __future__ import annotations

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
N_TRAIN = 40  # the last 12 pairs are held out
BETA = 0.1
SFT = TrainSpec(
    adapter=AdapterSpec(type="dora", r=8, alpha=16),
    n_epochs=1,
    batch_size=8,
    learning_rate=1e-3,
    seed=0,
    eval_every_n_steps=10**6,
    options=EngineOptions(device="cpu"),
)
DPO = replace(SFT, dpo=DpoSpec(beta=BETA))


def _split(src: Path, root: Path) -> tuple[Path, Path]:
    lines = src.read_text(encoding="utf-8").splitlines()
    root.mkdir(parents=True, exist_ok=True)
    (root / "train.jsonl").write_text("\n".join(lines[:N_TRAIN]) + "\n", encoding="utf-8")
    (root / "held_out.jsonl").write_text("\n".join(lines[N_TRAIN:]) + "\n", encoding="utf-8")
    return root / "train.jsonl", root / "held_out.jsonl"


def held_out_stats(smollm2_dir: Path, adapter_dir: Path, held_out: Path) -> DpoStats:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    base = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, adapter_dir)
    pairs = load_preference_dataset(held_out, tokenizer, 2048).examples
    return dpo_evaluate(model, pairs, tokenizer.pad_token_id or 0, torch.device("cpu"), BETA)


@pytest.fixture(scope="module")
def chain(smollm2_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("chain")
    chat_train, _ = _split(PIRATE, root / "chat")
    pref_train, held_out = _split(PREFERENCES, root / "pref")
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
    before = held_out_stats(smollm2_dir, sft.adapter_dir, held_out)
    after = held_out_stats(smollm2_dir, dpo.adapter_dir, held_out)
    print(f"\nheld-out SFT only: {before}\nheld-out SFT->DPO: {after}")
    print("DPO train margins:", [e["extra"]["train_reward_margin"] for e in reporter.metrics_extra])
    return before, after, reporter


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_dpo_raises_held_out_preference_accuracy_and_margin_above_sft(chain) -> None:
    before, after, reporter = chain
    assert after.reward_margin > before.reward_margin + 0.5
    assert after.preference_accuracy >= before.preference_accuracy
    assert after.preference_accuracy >= 0.9
    assert after.loss < before.loss
    # The engine's own held-out figures (full validation at the last epoch end) agree.
    last = reporter.metrics_extra[-1]["extra"]
    assert last["full_valid_reward_margin"] == pytest.approx(after.reward_margin, rel=1e-3)
