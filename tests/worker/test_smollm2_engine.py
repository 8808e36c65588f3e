"""The engine on the real SmolLM2: it learns, and fast DoRA trains exactly like PEFT's DoRA."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from tests.worker.helpers import PIRATE, RecordingReporter
from worker.training.options import EngineOptions
from worker.training.recipe import train
from worker.training.spec import AdapterSpec, TrainSpec

SPEC = TrainSpec(
    adapter=AdapterSpec(type="dora", r=8, alpha=16),
    n_epochs=2,
    batch_size=8,
    learning_rate=1e-3,
    seed=0,
    eval_every_n_steps=10**6,
    options=EngineOptions(device="cpu"),
)


@pytest.fixture(scope="module")
def pirate_split(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    lines = PIRATE.read_text(encoding="utf-8").splitlines()
    root = tmp_path_factory.mktemp("pirate")
    (root / "train.jsonl").write_text("\n".join(lines[:24]) + "\n", encoding="utf-8")
    (root / "valid.jsonl").write_text("\n".join(lines[40:48]) + "\n", encoding="utf-8")
    return root / "train.jsonl", root / "valid.jsonl"


@pytest.mark.slow
def test_smollm2_dora_learns_the_style_on_held_out_examples(
    smollm2_dir: Path, pirate_split, tmp_path: Path
) -> None:
    train_file, valid_file = pirate_split
    reporter = RecordingReporter()
    train(SPEC, smollm2_dir, train_file, tmp_path / "a", reporter, validation_file=valid_file)
    full = [m for m in reporter.metrics_extra if m["full_valid_loss"] is not None]
    assert len(full) == 2
    first, last = full[0], full[-1]
    assert last["full_valid_loss"] < first["full_valid_loss"]
    assert reporter.losses[-1] < reporter.losses[0] * 0.8


@pytest.mark.slow
def test_smollm2_fast_dora_trains_like_peft_default(
    smollm2_dir: Path, pirate_split, tmp_path: Path
) -> None:
    train_file, _ = pirate_split
    spec = replace(SPEC, n_epochs=1)
    fast, peft = RecordingReporter(), RecordingReporter()
    train(spec, smollm2_dir, train_file, tmp_path / "fast", fast)
    slow_spec = replace(spec, options=replace(spec.options, fast_dora=False, fused_adapters=False))
    train(slow_spec, smollm2_dir, train_file, tmp_path / "peft", peft)
    assert fast.losses == pytest.approx(peft.losses, rel=1e-4)
