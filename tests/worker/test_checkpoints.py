"""Checkpoints, resume, pause, cancel and validation metrics of the recipe (tiny model)."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.worker.helpers import PIRATE, RecordingReporter
from worker.training.checkpoints import STATE_JSON, STATE_PT, CheckpointMismatch
from worker.training.options import EngineOptions
from worker.training.recipe import train
from worker.training.spec import (
    METRIC_KEYS,
    AdapterSpec,
    TrainingPaused,
    TrainingStopped,
    TrainSpec,
)

# Dropout > 0 so that resuming must restore the RNG states to reproduce the run.
SPEC = TrainSpec(
    adapter=AdapterSpec(type="dora", r=4, alpha=8, dropout=0.1),
    n_epochs=2,
    batch_size=4,
    learning_rate=2e-2,
    seed=11,
    warmup_ratio=0.2,
    weight_decay=0.01,
    checkpoint_every_n_steps=2,
    eval_every_n_steps=2,
    options=EngineOptions(device="cpu", valid_sample_size=3),
)
TOTAL = 6  # 12 examples / batch 4, 2 epochs


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    lines = PIRATE.read_text(encoding="utf-8").splitlines()
    root = tmp_path_factory.mktemp("data")
    (root / "train.jsonl").write_text("\n".join(lines[:12]) + "\n", encoding="utf-8")
    (root / "valid.jsonl").write_text("\n".join(lines[12:18]) + "\n", encoding="utf-8")
    return root / "train.jsonl", root / "valid.jsonl"


@pytest.fixture(scope="module")
def full_run(tiny_model_dir: Path, files, tmp_path_factory: pytest.TempPathFactory):
    """The uninterrupted reference run; every checkpoint is kept in ``ckpts``."""
    train_file, valid_file = files
    root = tmp_path_factory.mktemp("full")
    reporter = RecordingReporter(checkpoint_root=root / "ckpts")
    result = train(
        SPEC, tiny_model_dir, train_file, root / "adapter", reporter, validation_file=valid_file
    )
    return result, reporter


def _weights(adapter_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(adapter_dir / "adapter_model.safetensors")


def _assert_same_adapter(a: Path, b: Path) -> None:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], rtol=1e-5, atol=1e-6)


def test_checkpoints_at_each_epoch_end_and_interval(full_run) -> None:
    result, reporter = full_run
    assert result.steps == TOTAL
    got = [(c.step, c.epoch, c.reason) for c in reporter.checkpoints]
    assert got == [(2, 1, "interval"), (3, 1, "epoch_end"), (4, 2, "interval"), (6, 2, "epoch_end")]
    assert all(c.total_steps == TOTAL for c in reporter.checkpoints)
    # The engine deletes its copy once the reporter has it.
    assert not any(c.directory.exists() for c in reporter.checkpoints)
    third = reporter.checkpoints[1]
    assert set(third.metrics) == set(METRIC_KEYS) and third.metrics["step"] == 3
    assert third.metrics["full_valid_loss"] is not None


def test_checkpoint_holds_peft_adapter_and_safe_training_state(full_run, tiny_model_dir) -> None:
    from peft import PeftModel, get_peft_model_state_dict
    from transformers import AutoModelForCausalLM

    _, reporter = full_run
    ckpt = reporter.checkpoint_copies[1]
    names = {p.name for p in ckpt.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", STATE_JSON, STATE_PT} <= names
    blob = torch.load(ckpt / STATE_PT, weights_only=True)  # no arbitrary pickle needed
    assert {"optimizer", "scheduler", "rng"} <= blob.keys()
    state = json.loads((ckpt / STATE_JSON).read_text())
    assert (state["step"], state["epoch"], state["step_in_epoch"]) == (3, 1, 0)
    assert [h["step"] for h in state["history"]] == [1, 2, 3]

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tuned = PeftModel.from_pretrained(base, ckpt)
    saved = _weights(ckpt)
    loaded = get_peft_model_state_dict(tuned)
    assert loaded.keys() == saved.keys()
    assert all(torch.equal(loaded[k], saved[k]) for k in saved)


@pytest.mark.parametrize("resume_index", [0, 1])  # mid-epoch (step 2) and epoch end (step 3)
def test_resume_ends_like_the_uninterrupted_run(
    full_run, files, tiny_model_dir: Path, tmp_path: Path, resume_index: int
) -> None:
    result, reporter = full_run
    train_file, valid_file = files
    ckpt = reporter.checkpoint_copies[resume_index]
    done = reporter.checkpoints[resume_index].step
    resumed = RecordingReporter()
    again = train(
        SPEC,
        tiny_model_dir,
        train_file,
        tmp_path / "adapter",
        resumed,
        validation_file=valid_file,
        resume_from=ckpt,
    )
    assert ("info", f"Resumed from step {done}") in resumed.messages
    assert again.steps == result.steps and again.trained_tokens == result.trained_tokens
    assert [m[0] for m in resumed.metrics_calls] == list(range(done + 1, TOTAL + 1))
    expected = reporter.metrics_calls[done:]
    for got, want in zip(resumed.metrics_calls, expected, strict=True):
        assert got[:2] == want[:2]
        assert got[2:] == pytest.approx(want[2:], rel=1e-5, abs=1e-6)
    assert again.final_train_loss == pytest.approx(result.final_train_loss, rel=1e-5)
    _assert_same_adapter(again.adapter_dir, result.adapter_dir)


def test_pause_saves_a_checkpoint_then_raises_and_resumes(
    full_run, files, tiny_model_dir: Path, tmp_path: Path
) -> None:
    result, _ = full_run
    train_file, valid_file = files
    paused = RecordingReporter(pause_after=4, checkpoint_root=tmp_path / "ckpts")
    out = tmp_path / "adapter"
    with pytest.raises(TrainingPaused) as info:
        train(SPEC, tiny_model_dir, train_file, out, paused, validation_file=valid_file)
    assert info.value.step == 4
    assert [(c.step, c.reason) for c in paused.checkpoints][-1] == (4, "pause")
    assert paused.checkpoints[-1].epoch == 2
    assert not (out / "adapter_model.safetensors").exists()

    again = train(
        SPEC,
        tiny_model_dir,
        train_file,
        out,
        RecordingReporter(),
        validation_file=valid_file,
        resume_from=paused.checkpoint_copies[-1],
    )
    assert (again.steps, again.trained_tokens) == (result.steps, result.trained_tokens)
    _assert_same_adapter(out, result.adapter_dir)


def test_cancel_stops_within_one_step_and_saves_nothing(
    files, tiny_model_dir: Path, tmp_path: Path
) -> None:
    reporter = RecordingReporter(stop_after=1)
    with pytest.raises(TrainingStopped):
        train(SPEC, tiny_model_dir, files[0], tmp_path / "a", reporter)
    assert [m[0] for m in reporter.metrics_calls] == [1]
    assert reporter.stop_checks == 2 and not reporter.checkpoints
    assert not (tmp_path / "a").exists()


def test_a_checkpoint_of_the_old_length_grouped_default_resumes_with_its_own_batches(
    files, tiny_model_dir: Path, tmp_path: Path
) -> None:
    # Written before the default became random batches (group_size_multiplier 16 -> 1): a
    # job paused across the upgrade continues with the batches it started with.
    spec = replace(SPEC, n_epochs=1, checkpoint_every_n_steps=None, eval_every_n_steps=None)
    old = replace(spec, options=replace(spec.options, group_size_multiplier=16))
    whole = train(old, tiny_model_dir, files[0], tmp_path / "whole", RecordingReporter())
    paused = RecordingReporter(pause_after=2, checkpoint_root=tmp_path / "ckpts")
    with pytest.raises(TrainingPaused):
        train(old, tiny_model_dir, files[0], tmp_path / "p", paused)
    again = train(
        spec,
        tiny_model_dir,
        files[0],
        tmp_path / "again",
        RecordingReporter(),
        resume_from=paused.checkpoint_copies[-1],
    )
    assert (again.steps, again.trained_tokens) == (whole.steps, whole.trained_tokens)
    _assert_same_adapter(again.adapter_dir, whole.adapter_dir)


def test_resume_refuses_a_checkpoint_of_another_run(
    full_run, files, tiny_model_dir: Path, tmp_path: Path
) -> None:
    _, reporter = full_run
    other = replace(SPEC, batch_size=3)
    with pytest.raises(CheckpointMismatch):
        train(
            other,
            tiny_model_dir,
            files[0],
            tmp_path / "a",
            RecordingReporter(),
            resume_from=reporter.checkpoint_copies[0],
        )


def test_validation_metrics_sampled_every_n_steps_and_full_at_epoch_end(full_run) -> None:
    _, reporter = full_run
    by_step = {m["step"]: m for m in reporter.metrics_extra}
    assert sorted(by_step) == list(range(1, TOTAL + 1))
    sampled = [s for s, m in by_step.items() if m["valid_loss"] is not None]
    full = [s for s, m in by_step.items() if m["full_valid_loss"] is not None]
    assert sampled == [2, 4, 6] and full == [3, 6]
    for m in by_step.values():
        for key in ("valid", "full_valid"):
            loss, acc = m[f"{key}_loss"], m[f"{key}_mean_token_accuracy"]
            assert (loss is None) == (acc is None)
            assert loss is None or (math.isfinite(loss) and 0 <= acc <= 1)
        assert m["tokens_per_second"] is not None and m["tokens_per_second"] > 0
    # The model learns the pirate style: held-out loss falls over the run.
    assert by_step[6]["full_valid_loss"] < by_step[3]["full_valid_loss"]
