"""Data-parallel training on CPU: two processes, gloo, same result as one process."""

from __future__ import annotations

import pickle
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.worker.helpers import (
    RecordingReporter,
    make_pausing_reporter,
    make_recording_reporter,
)
from worker.training.distributed import train_data_parallel
from worker.training.parallel import DataParallel
from worker.training.recipe import train
from worker.training.spec import AdapterSpec, TrainingPaused, TrainSpec

SPEC = TrainSpec(
    adapter=AdapterSpec(type="dora", r=4, alpha=8),
    n_epochs=1,
    batch_size=5,  # 12 examples: steps of 5, 5 and 2; an odd batch splits 3 + 2 over ranks
    learning_rate=2e-2,
    seed=5,
    extra={"device": "cpu"},
)


def test_two_gloo_processes_match_one_process(
    tiny_model_dir: Path, small_chat_file: Path, tmp_path: Path
) -> None:
    single = train(SPEC, tiny_model_dir, small_chat_file, tmp_path / "one", RecordingReporter())
    double = train_data_parallel(
        2, SPEC, tiny_model_dir, small_chat_file, tmp_path / "two", make_recording_reporter,
        backend="gloo",
    )
    assert (double.steps, double.trained_tokens) == (single.steps, single.trained_tokens)
    assert double.final_train_loss == pytest.approx(single.final_train_loss, rel=1e-5)
    a = load_file(single.adapter_dir / "adapter_model.safetensors")
    b = load_file(double.adapter_dir / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    # Float rounding differs (other micro-batches); Adam magnifies it on near-zero gradients.
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-3, atol=1e-4)
    # And training moved the adapter: the comparison is not between two untouched inits.
    assert any(torch.count_nonzero(a[k]) for k in a if "lora_B" in k)


def test_pause_in_a_data_parallel_run_reaches_the_launcher(
    tiny_model_dir: Path, small_chat_file: Path, tmp_path: Path
) -> None:
    spec = replace(SPEC, batch_size=3)
    with pytest.raises(TrainingPaused) as info:
        train_data_parallel(
            2, spec, tiny_model_dir, small_chat_file, tmp_path / "p", make_pausing_reporter,
            backend="gloo",
        )
    assert info.value.step == 2


def test_shard_deals_examples_by_length() -> None:
    lengths = [5, 50, 7, 30, 9]
    ranks = [DataParallel(r, 2).shard(range(5), lengths) for r in range(2)]
    assert ranks == [[0, 4, 1], [2, 3]]
    assert DataParallel().shard([3, 1], lengths) == [3, 1]


def test_training_paused_keeps_its_step_through_pickling() -> None:
    exc = pickle.loads(pickle.dumps(TrainingPaused(7)))
    assert isinstance(exc, TrainingPaused) and exc.step == 7
