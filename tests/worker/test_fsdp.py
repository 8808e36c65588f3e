"""FSDP2 training on CPU: two gloo processes with the model sharded per decoder layer train
the same adapter as one process (LoRA and DoRA, with the engine's fused forwards on and off),
ranks with unequal work per step neither hang nor drift, and a sharded checkpoint resumes,
on two ranks or on one, to the uninterrupted run's adapter."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.worker.helpers import RecordingReporter, chat, write_jsonl
from worker.training.distributed import train_data_parallel
from worker.training.options import EngineOptions
from worker.training.recipe import train
from worker.training.spec import AdapterSpec, TrainingPaused, TrainResult, TrainSpec

FSDP = EngineOptions(device="cpu", sharding="fsdp")
SPEC = TrainSpec(
    adapter=AdapterSpec(type="lora", r=4, alpha=8),
    n_epochs=1,
    batch_size=5,  # 12 examples: steps of 5, 5 and 2
    learning_rate=2e-2,
    seed=5,
    options=FSDP,
)


def adapter(result: TrainResult) -> dict[str, torch.Tensor]:
    return load_file(result.adapter_dir / "adapter_model.safetensors")


def assert_same_adapter(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    # Float rounding differs (other micro-batches); Adam magnifies it on near-zero gradients.
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-3, atol=1e-4)
    assert any(torch.count_nonzero(a[k]) for k in a if "lora_B" in k)  # training moved it


@pytest.mark.parametrize(
    ("kind", "fused"), [("lora", True), ("dora", True), ("dora", False)], ids=str
)
def test_fsdp_on_two_ranks_equals_one_process(
    kind: str, fused: bool, tiny_model_dir: Path, small_chat_file: Path, tmp_path: Path
) -> None:
    options = replace(FSDP, fused_adapters=fused, fast_dora=fused)
    spec = replace(SPEC, adapter=replace(SPEC.adapter, type=kind), options=options)
    one = RecordingReporter()
    single = train(spec, tiny_model_dir, small_chat_file, tmp_path / "one", one)
    two = RecordingReporter(checkpoint_root=tmp_path / "ckpts")
    sharded = train_data_parallel(
        2, spec, tiny_model_dir, small_chat_file, tmp_path / "two", two, backend="gloo"
    )
    assert (sharded.steps, sharded.trained_tokens) == (single.steps, single.trained_tokens)
    assert two.losses == pytest.approx(one.losses, rel=1e-5)
    assert_same_adapter(adapter(single), adapter(sharded))
    # The epoch-end checkpoint holds the gathered, whole adapter (not one rank's shard).
    assert_same_adapter(
        adapter(single), load_file(two.checkpoint_copies[0] / "adapter_model.safetensors")
    )


def test_skewed_work_per_rank_finishes_and_matches(tiny_model_dir: Path, tmp_path: Path) -> None:
    # One long example and short ones, with micro-batches of 64 tokens: in each step of 3 the
    # rank holding the long one runs more micro-batches than the other, and the last step has a
    # single example, so one rank has nothing at all. Without padding to a common count the
    # ranks' collectives mismatch and the run fails or hangs.
    rows = [chat("tell me everything " * 20, "a long answer " * 30)]
    rows += [chat(f"q{i}", f"short answer {i}") for i in range(6)]
    data = write_jsonl(tmp_path / "skewed.jsonl", rows)
    options = replace(FSDP, micro_batch_tokens=64, micro_batch_size=1)
    spec = replace(SPEC, batch_size=3, options=options)
    single = train(spec, tiny_model_dir, data, tmp_path / "one", RecordingReporter())
    sharded = train_data_parallel(
        2,
        spec,
        tiny_model_dir,
        data,
        tmp_path / "two",
        RecordingReporter(),
        backend="gloo",
        timeout_seconds=60,  # a hang fails the test within a minute instead of 30
        validation_file=data,
    )
    assert sharded.steps == single.steps == 3
    assert sharded.final_train_loss == pytest.approx(single.final_train_loss, rel=1e-5)
    assert_same_adapter(adapter(single), adapter(sharded))


@pytest.mark.parametrize("resume_ranks", [2, 1])
def test_sharded_checkpoint_resumes_to_the_uninterrupted_run(
    resume_ranks: int, tiny_model_dir: Path, small_chat_file: Path, tmp_path: Path
) -> None:
    spec = replace(SPEC, batch_size=3, adapter=replace(SPEC.adapter, type="dora"))
    paused = RecordingReporter(pause_after=2, checkpoint_root=tmp_path / "ckpts")
    with pytest.raises(TrainingPaused):
        train_data_parallel(
            2, spec, tiny_model_dir, small_chat_file, tmp_path / "p", paused, backend="gloo"
        )
    assert [(c.step, c.reason) for c in paused.checkpoints] == [(2, "pause")]
    resumed = train_data_parallel(
        resume_ranks,
        spec,
        tiny_model_dir,
        small_chat_file,
        tmp_path / "r",
        RecordingReporter(),
        backend="gloo",
        resume_from=paused.checkpoint_copies[0],
    )
    whole = train_data_parallel(
        2,
        spec,
        tiny_model_dir,
        small_chat_file,
        tmp_path / "w",
        RecordingReporter(),
        backend="gloo",
    )
    assert (resumed.steps, resumed.trained_tokens) == (whole.steps, whole.trained_tokens)
    assert resumed.final_train_loss == pytest.approx(whole.final_train_loss, rel=1e-5)
    assert_same_adapter(adapter(whole), adapter(resumed))


def test_sharding_option_is_validated() -> None:
    with pytest.raises(ValueError, match="sharding must be one of ddp, fsdp"):
        EngineOptions(sharding="zero3")  # type: ignore[arg-type]
