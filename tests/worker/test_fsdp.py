"""FSDP2 training on CPU: two gloo processes with the model sharded per decoder layer train
the same adapter as one process (LoRA and DoRA, with the engine's fused forwards on and off;
over an NF4 base; DPO), ranks with unequal work per step neither hang nor drift, a sharded
checkpoint resumes, on two ranks or on one, to the uninterrupted run's adapter, and what FSDP
cannot train (fp16, an int8 base) is refused by name."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from tests.worker.helpers import (
    RecordingReporter,
    assert_same_adapter,
    chat,
    preference_rows,
    write_jsonl,
)
from worker.training.distributed import train_data_parallel
from worker.training.fsdp import check_shardable
from worker.training.options import EngineOptions
from worker.training.quantization import QUANTIZATION_FILE
from worker.training.recipe import train
from worker.training.spec import AdapterSpec, DpoSpec, TrainingPaused, TrainSpec

FSDP = EngineOptions(device="cpu", sharding="fsdp")
SPEC = TrainSpec(
    adapter=AdapterSpec(type="lora", r=4, alpha=8),
    n_epochs=1,
    batch_size=5,  # 12 examples: steps of 5, 5 and 2
    learning_rate=2e-2,
    seed=5,
    options=FSDP,
)


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
    assert_same_adapter(single.adapter_dir, sharded.adapter_dir)
    # The epoch-end checkpoint holds the gathered, whole adapter (not one rank's shard).
    assert_same_adapter(single.adapter_dir, two.checkpoint_copies[0])


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
    assert_same_adapter(single.adapter_dir, sharded.adapter_dir)


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
    assert_same_adapter(whole.adapter_dir, resumed.adapter_dir)


def test_sharding_option_is_validated() -> None:
    with pytest.raises(ValueError, match="sharding must be one of ddp, fsdp"):
        EngineOptions(sharding="zero3")  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", ["lora", "dora"])
def test_fsdp_over_a_4bit_base_equals_one_process(
    kind: str, tiny_model_dir: Path, small_chat_file: Path, tmp_path: Path
) -> None:
    # QLoRA / QDoRA: each rank loads the NF4 base, keeps its share of the packed weights.
    pytest.importorskip("bitsandbytes")
    adapter_spec = AdapterSpec(type=kind, r=4, alpha=8, quantization="nf4")
    spec = replace(SPEC, adapter=adapter_spec, options=replace(FSDP, precision="fp32"))
    one = RecordingReporter()
    single = train(spec, tiny_model_dir, small_chat_file, tmp_path / "one", one)
    two = RecordingReporter()
    sharded = train_data_parallel(
        2, spec, tiny_model_dir, small_chat_file, tmp_path / "two", two, backend="gloo"
    )
    assert two.losses == pytest.approx(one.losses, rel=1e-5)
    assert_same_adapter(single.adapter_dir, sharded.adapter_dir)
    # The adapter records its quantized base, as a single process's does.
    record = sharded.adapter_dir / QUANTIZATION_FILE
    assert record.read_text() == (single.adapter_dir / QUANTIZATION_FILE).read_text()


def test_dpo_under_fsdp_equals_one_process(tiny_model_dir: Path, tmp_path: Path) -> None:
    # 7 pairs in steps of 3 and one pair per micro-batch: the ranks hold 2 and 1 pairs of a
    # step (and 1 and 0 of the last), so their pass counts differ in the reference table, the
    # training steps and the validation alike.
    rows = preference_rows(10)
    train_file = write_jsonl(tmp_path / "train.jsonl", rows[:7])
    valid_file = write_jsonl(tmp_path / "valid.jsonl", rows[7:])
    spec = replace(
        SPEC,
        batch_size=3,
        eval_every_n_steps=1,
        options=replace(FSDP, micro_batch_size=2),
        dpo=DpoSpec(beta=0.1),
    )
    one = RecordingReporter()
    single = train(
        spec, tiny_model_dir, train_file, tmp_path / "one", one, validation_file=valid_file
    )
    two = RecordingReporter()
    sharded = train_data_parallel(
        2,
        spec,
        tiny_model_dir,
        train_file,
        tmp_path / "two",
        two,
        backend="gloo",
        timeout_seconds=60,
        validation_file=valid_file,
    )
    assert sharded.steps == single.steps == 3
    assert two.losses == pytest.approx(one.losses, rel=1e-5)

    # Validation (the pairs' mean loss and reward margin) runs at every step.
    def valid(reporter: RecordingReporter) -> list[float]:
        return [
            v
            for m in reporter.metrics_extra
            for v in (m["valid_loss"], m["extra"]["valid_reward_margin"])
        ]

    assert valid(two) == pytest.approx(valid(one), rel=1e-4)
    assert_same_adapter(single.adapter_dir, sharded.adapter_dir)


def test_what_fsdp_cannot_train_is_refused_by_name(
    tiny_model_dir: Path, small_chat_file: Path, tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match='precision "fp16" cannot be combined with sharding'):
        EngineOptions(sharding="fsdp", precision="fp16")
    # "auto" resolves to fp16 on a GPU without bf16: refused once resolved.
    with pytest.raises(ValueError, match='precision "fp16"'):
        check_shardable(torch.float16)
    check_shardable(torch.bfloat16)
    int8 = replace(SPEC, adapter=AdapterSpec(type="lora", r=4, alpha=8, quantization="int8"))
    with pytest.raises(ValueError, match='quantization "int8" cannot be combined with sharding'):
        train(int8, tiny_model_dir, small_chat_file, tmp_path / "int8", RecordingReporter())
    assert not (tmp_path / "int8").exists()
