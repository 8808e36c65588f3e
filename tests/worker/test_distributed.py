"""Data-parallel training on CPU: two gloo processes, same result as one process; the
launcher's reporter serves rank 0; a lost rank ends the run promptly."""

from __future__ import annotations

import pickle
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from tests.worker.helpers import (
    RankKillingReporter,
    RecordingReporter,
    assert_same_adapter,
    chat,
    write_jsonl,
)
from worker.failures import TRANSIENT_CODES, classify
from worker.training.distributed import plan_parallelism, run_training, train_data_parallel
from worker.training.options import EngineOptions
from worker.training.parallel import DataParallel
from worker.training.recipe import train
from worker.training.spec import (
    AdapterSpec,
    TrainingPaused,
    TrainingProcessLost,
    TrainingStopped,
    TrainSpec,
)

SPEC = TrainSpec(
    adapter=AdapterSpec(type="dora", r=4, alpha=8),
    n_epochs=1,
    batch_size=5,  # 12 examples: steps of 5, 5 and 2; an odd batch splits 3 + 2 over ranks
    learning_rate=2e-2,
    seed=5,
    options=EngineOptions(device="cpu"),
)


def test_two_gloo_processes_match_one_process(
    tiny_model_dir: Path, small_chat_file: Path, tmp_path: Path
) -> None:
    one = RecordingReporter()
    single = train(SPEC, tiny_model_dir, small_chat_file, tmp_path / "one", one)
    two = RecordingReporter(checkpoint_root=tmp_path / "ckpts")
    double = train_data_parallel(
        2, SPEC, tiny_model_dir, small_chat_file, tmp_path / "two", two, backend="gloo"
    )
    assert (double.steps, double.trained_tokens) == (single.steps, single.trained_tokens)
    assert double.final_train_loss == pytest.approx(single.final_train_loss, rel=1e-5)
    assert_same_adapter(single.adapter_dir, double.adapter_dir)
    # The reporter (in this process) heard rank 0 exactly as a single-process run's does.
    assert [m[:2] for m in two.metrics_calls] == [m[:2] for m in one.metrics_calls]
    assert two.losses == pytest.approx(one.losses, rel=1e-5)
    assert [(c.step, c.reason) for c in two.checkpoints] == [(3, "epoch_end")]
    assert (two.checkpoint_copies[0] / "adapter_model.safetensors").exists()
    assert any("x 2" in text for _, text in two.messages)


def test_pause_in_a_data_parallel_run_reaches_the_launcher(
    tiny_model_dir: Path, small_chat_file: Path, tmp_path: Path
) -> None:
    spec = replace(SPEC, batch_size=3)
    reporter = RecordingReporter(pause_after=2, checkpoint_root=tmp_path / "ckpts")
    with pytest.raises(TrainingPaused) as info:
        train_data_parallel(
            2, spec, tiny_model_dir, small_chat_file, tmp_path / "p", reporter, backend="gloo"
        )
    assert info.value.step == 2
    assert [(c.step, c.reason) for c in reporter.checkpoints] == [(2, "pause")]

    # Resumed from that checkpoint (two processes again), the run ends as an uninterrupted one.
    resumed = train_data_parallel(
        2,
        spec,
        tiny_model_dir,
        small_chat_file,
        tmp_path / "r",
        RecordingReporter(),
        backend="gloo",
        resume_from=reporter.checkpoint_copies[0],
    )
    whole = train(spec, tiny_model_dir, small_chat_file, tmp_path / "w", RecordingReporter())
    assert (resumed.steps, resumed.trained_tokens) == (whole.steps, whole.trained_tokens)
    assert_same_adapter(whole.adapter_dir, resumed.adapter_dir)


def test_cancel_in_a_data_parallel_run_stops_every_rank_within_one_step(
    tiny_model_dir: Path, small_chat_file: Path, tmp_path: Path
) -> None:
    reporter = RecordingReporter(stop_after=1)
    with pytest.raises(TrainingStopped):
        train_data_parallel(
            2, SPEC, tiny_model_dir, small_chat_file, tmp_path / "c", reporter, backend="gloo"
        )
    assert [m[0] for m in reporter.metrics_calls] == [1]
    assert not reporter.checkpoints and not (tmp_path / "c").exists()


def test_a_killed_rank_ends_the_run_without_hanging(
    tiny_model_dir: Path, small_chat_file: Path, tmp_path: Path
) -> None:
    spec = replace(SPEC, batch_size=2)  # 6 steps: rank 1 dies after the second
    reporter = RankKillingReporter(rank=1, after=2)
    began = time.monotonic()
    with pytest.raises(TrainingProcessLost, match="process 1 of 2.*signal 9") as info:
        train_data_parallel(
            2,
            spec,
            tiny_model_dir,
            small_chat_file,
            tmp_path / "k",
            reporter,
            backend="gloo",
            timeout_seconds=120,
        )
    assert reporter.killed is not None
    assert time.monotonic() - began < 60  # well under the process group's timeout
    assert not (tmp_path / "k").exists()  # nothing saved
    code, _, _ = classify(info.value)
    assert code in TRANSIENT_CODES  # the worker retries the job from its last checkpoint


def test_an_error_in_the_ranks_reaches_the_launcher(tiny_model_dir: Path, tmp_path: Path) -> None:
    # Every example's only assistant turn has weight 0: nothing to train, on any rank.
    data = write_jsonl(tmp_path / "t.jsonl", [chat(f"q{i}", "a", weight=0) for i in range(4)])
    with pytest.raises(ValueError, match="no example with trainable"):
        train_data_parallel(
            2, SPEC, tiny_model_dir, data, tmp_path / "e", RecordingReporter(), backend="gloo"
        )


def test_plan_parallelism_on_cpu() -> None:
    if torch.cuda.is_available():
        pytest.skip("a CUDA machine plans GPUs")
    assert plan_parallelism("all", 1).world_size == 1
    plan = plan_parallelism("all", 3)
    assert (plan.world_size, plan.backend, plan.device_type) == (3, "gloo", "cpu")
    with pytest.raises(RuntimeError, match="DORADO_WORKER_CPU_PROCESSES"):
        plan_parallelism("all", 0)


def test_one_process_trains_in_place(
    tiny_model_dir: Path, small_chat_file: Path, tmp_path: Path
) -> None:
    # No process is spawned: the reporter's calls happen on this very thread.
    import threading

    seen: set[int] = set()

    class Here(RecordingReporter):
        def should_stop(self) -> bool:
            seen.add(threading.get_ident())
            return super().should_stop()

    result = run_training(
        SPEC,
        tiny_model_dir,
        small_chat_file,
        tmp_path / "a",
        Here(),
        plan=plan_parallelism("all", 1),
    )
    assert result.steps == 3 and seen == {threading.get_ident()}


def test_shard_deals_examples_by_length() -> None:
    lengths = [5, 50, 7, 30, 9]
    ranks = [DataParallel(r, 2).shard(range(5), lengths) for r in range(2)]
    assert ranks == [[0, 4, 1], [2, 3]]
    assert DataParallel().shard([3, 1], lengths) == [3, 1]


def test_training_paused_keeps_its_step_through_pickling() -> None:
    exc = pickle.loads(pickle.dumps(TrainingPaused(7)))
    assert isinstance(exc, TrainingPaused) and exc.step == 7
