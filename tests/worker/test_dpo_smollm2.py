"""DPO on the real SmolLM2 after SFT (the usual recipe): on held-out pairs of
examples/pirate_preferences.jsonl, SFT -> DPO ranks the pairs better than SFT alone.

The engine's reference for the DPO stage is the SFT model (the policy it starts from), so its
held-out figures measure what DPO added: against that reference the SFT-only model has rewards
0, margin 0, accuracy 0 and loss ln 2 by construction (the run's first step shows it). Two
figures that do not depend on the run's reference are measured too, for the SFT-only and the
SFT -> DPO adapters as saved:

* the DPO quantities against the base model (the adapter switched off), one fixed reference
  for both;
* the policy's own ranking: the share of pairs whose chosen reply has the higher mean
  per-token log-probability (no reference at all).

Kept as short as it can be while showing that (the suite's time budget): a LoRA adapter, one
SFT step, two DPO steps, 128-token sequences (every line is shorter), 8 held-out pairs.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import torch

from tests.conftest import EXAMPLES
from tests.worker.helpers import PIRATE, RecordingReporter
from worker.training.data import IGNORE_INDEX
from worker.training.dpo import (
    dpo_loss,
    load_preference_dataset,
    pair_micro_batches,
    reference_policy,
    sequence_logps,
)
from worker.training.options import EngineOptions
from worker.training.recipe import train
from worker.training.spec import AdapterSpec, DpoSpec, TrainSpec

PREFERENCES = EXAMPLES / "pirate_preferences.jsonl"
N_SFT = 8  # pirate.jsonl's first lines: the SFT-only starting point (one step)
N_DPO = 16  # preference pairs trained on (two steps; their prompts are pirate.jsonl's first)
N_HELD_OUT = 8  # the file's last pairs, never trained on by either stage
BETA = 0.1
MAX_LEN = 128
CPU = torch.device("cpu")
SFT = TrainSpec(
    adapter=AdapterSpec(type="lora", r=8, alpha=16),
    n_epochs=1,
    batch_size=8,
    learning_rate=1e-3,
    seed=0,
    max_seq_length=MAX_LEN,
    eval_every_n_steps=10**6,
    # The run's last step validates the sample and the whole held-out set: a 1-pair sample.
    options=EngineOptions(device="cpu", valid_sample_size=1),
)
DPO = replace(SFT, learning_rate=2e-3, dpo=DpoSpec(beta=BETA))


@dataclass(frozen=True)
class HeldOut:
    """An adapter's held-out figures that do not depend on the DPO run's reference."""

    vs_base_margin: float  # DPO's reward margin against the base model
    vs_base_accuracy: float
    vs_base_loss: float
    self_ranking: float  # pairs whose chosen reply has the higher mean per-token log-prob


def _lines(src: Path, root: Path, name: str, part: slice) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    lines = src.read_text(encoding="utf-8").splitlines()[part]
    (root / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root / name


def held_out_figures(smollm2_dir: Path, adapters: dict[str, Path], held_out: Path) -> dict:
    """:class:`HeldOut` of each adapter (one base model, its adapters loaded side by side)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    pairs = load_preference_dataset(held_out, tokenizer, MAX_LEN).examples
    assert len(pairs) == N_HELD_OUT
    (micro,) = pair_micro_batches(pairs, range(len(pairs)), tokenizer.pad_token_id or 0, 16)
    batch = micro.batch
    n_tokens = (batch.labels[:, 1:] != IGNORE_INDEX).sum(dim=1)
    base = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32)
    names = list(adapters)
    model = PeftModel.from_pretrained(base, adapters[names[0]], adapter_name=names[0]).eval()
    for name in names[1:]:
        model.load_adapter(adapters[name], adapter_name=name)
    with reference_policy(model):
        ref = sequence_logps(model, batch, CPU, None)
    found = {}
    for name in names:
        model.set_adapter(name)
        with torch.no_grad():
            logps = sequence_logps(model, batch, CPU, None)
        n = len(pairs)
        losses, chosen, rejected = dpo_loss(logps[:n], logps[n:], ref[:n], ref[n:], BETA)
        mean = logps / n_tokens
        found[name] = HeldOut(
            vs_base_margin=float((chosen - rejected).mean()),
            vs_base_accuracy=float((chosen > rejected).float().mean()),
            vs_base_loss=float(losses.mean()),
            self_ranking=float((mean[:n] > mean[n:]).float().mean()),
        )
    return found


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
    figures = held_out_figures(
        smollm2_dir, {"sft": sft.adapter_dir, "dpo": dpo.adapter_dir}, held_out
    )
    last = reporter.metrics_extra[-1]  # full validation at the epoch end (the last step)
    vs_sft = {"full_valid_loss": last["full_valid_loss"], **last["extra"]}
    print(f"\nSFT + DPO training: {trained:.1f} s ({sft.steps} + {dpo.steps} steps)")
    print(f"held-out SFT->DPO vs the SFT reference: {vs_sft}")
    print(f"held-out SFT only:  {figures['sft']}\nheld-out SFT->DPO: {figures['dpo']}")
    return reporter, vs_sft, figures["sft"], figures["dpo"]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_dpo_ranks_held_out_pairs_better_than_sft(chain) -> None:
    reporter, vs_sft, sft, dpo = chain
    # The run's reference is the SFT model: its first step (the SFT weights) scores 0 / ln 2.
    first = reporter.metrics_extra[0]["extra"]
    assert first["train_reward_margin"] == pytest.approx(0.0, abs=1e-4)
    assert reporter.losses[0] == pytest.approx(math.log(2), abs=1e-4)
    # Against it, DPO's held-out gains: SFT only is 0 / 0 / ln 2 there.
    assert vs_sft["full_valid_reward_margin"] > 0.5
    assert vs_sft["full_valid_preference_accuracy"] >= 0.75
    assert vs_sft["full_valid_loss"] < math.log(2) - 0.1
    # Against the base model, one reference for both adapters: a larger margin, a lower loss.
    assert dpo.vs_base_margin > sft.vs_base_margin + 0.5
    assert dpo.vs_base_accuracy >= sft.vs_base_accuracy
    assert dpo.vs_base_loss < sft.vs_base_loss
    # No reference at all: the policy itself now prefers the chosen replies (SFT alone, whose
    # one step has not made the pirate reply likelier per token than the plain one, did not).
    assert dpo.self_ranking > sft.self_ranking
    assert dpo.self_ranking >= 0.75
