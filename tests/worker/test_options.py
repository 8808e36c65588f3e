"""Typed engine and job options: misspelt names and bad values fail, every option reaches the
engine, and a job's stored options become typed in one place (``worker.tasks.build_spec``)."""

from __future__ import annotations

import inspect
import json
import logging
from dataclasses import MISSING, fields, replace
from pathlib import Path
from typing import Any

import pytest

from tests.worker.helpers import RecordingReporter
from worker.training import fast_dora, fused_adapter, recipe
from worker.training.options import PLATFORM_JOB_OPTIONS, EngineOptions, JobOptions
from worker.training.parallel import DataParallel
from worker.training.spec import AdapterSpec, TrainSpec

# Every knob away from its default, so that a run shows each one being read.
NON_DEFAULT = EngineOptions(
    lr_scheduler="cosine",
    group_size_multiplier=3,
    valid_sample_size=2,
    micro_batch_size=1,
    micro_batch_tokens=4096,
    micro_batch_overhead_tokens=5,
    fast_dora=False,
    fused_adapters=False,
    loss_positions_only=False,
    device="cpu",
    precision="bf16",
    sharding="fsdp",  # asked for; a single process has nothing to shard
    base_model_name="my-base-model",
    job_id="ftjob-options",
)


def test_a_misspelt_engine_option_is_an_error() -> None:
    with pytest.raises(TypeError, match="fast_dorra"):
        EngineOptions(fast_dorra=False)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="micro_batch_sizes"):
        replace(EngineOptions(), micro_batch_sizes=4)  # type: ignore[call-arg]


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("lr_scheduler", "cos"),
        ("group_size_multiplier", 0),
        ("valid_sample_size", 0),
        ("micro_batch_size", 0),
        ("micro_batch_size", "8"),
        ("micro_batch_tokens", -1),
        ("micro_batch_overhead_tokens", -1),
        ("micro_batch_overhead_tokens", True),
        ("fast_dora", "false"),
        ("fused_adapters", 0),
        ("loss_positions_only", None),
        ("device", "gpu"),
        ("device", "cpu:0"),
        ("base_model_name", ""),
        ("job_id", 7),
    ],
)
def test_a_bad_engine_option_value_names_the_field(name: str, value: Any) -> None:
    with pytest.raises(ValueError, match=f"^{name} must be"):
        EngineOptions(**{name: value})


def test_engine_options_accept_documented_devices() -> None:
    for device in ("cpu", "cuda", "cuda:1", "mps", None):
        assert EngineOptions(device=device).device == device


def _spy(monkeypatch: pytest.MonkeyPatch, module: object, name: str) -> list[dict[str, Any]]:
    """Wrap ``module.name`` so that each call's arguments (by parameter name, defaults
    applied) are recorded; the real function still runs."""
    real = getattr(module, name)
    signature = inspect.signature(real)
    calls: list[dict[str, Any]] = []

    def recording(*args: Any, **kwargs: Any) -> Any:
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        calls.append(dict(bound.arguments))
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, recording)
    return calls


def test_every_engine_option_reaches_the_engine(
    tiny_model_dir: Path,
    small_chat_file: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    for f in fields(EngineOptions):  # a new option must get a non-default value above
        assert getattr(NON_DEFAULT, f.name) != f.default, f.name
    select_device = _spy(monkeypatch, recipe, "select_device")
    lr_factor = _spy(monkeypatch, recipe, "lr_factor")
    plan_epoch = _spy(monkeypatch, recipe, "plan_epoch")
    step_micro_batches = _spy(monkeypatch, recipe, "step_micro_batches")
    forward_backward = _spy(monkeypatch, recipe, "forward_backward")
    evaluate = _spy(monkeypatch, recipe, "evaluate")
    fast = _spy(monkeypatch, fast_dora, "enable_fast_dora")
    fused = _spy(monkeypatch, fused_adapter, "enable_fused_adapters")
    load_model = _spy(monkeypatch, recipe, "_load_model")
    asked_sharded: list[bool] = []
    current = DataParallel.current.__func__  # type: ignore[attr-defined]

    def recording_current(cls: type[DataParallel], sharded: bool = False) -> DataParallel:
        asked_sharded.append(sharded)
        return current(cls, sharded)

    monkeypatch.setattr(DataParallel, "current", classmethod(recording_current))
    spec = TrainSpec(
        adapter=AdapterSpec(type="dora", r=4, alpha=8),
        n_epochs=1,
        batch_size=4,
        learning_rate=1e-2,
        seed=5,
        options=NON_DEFAULT,
    )
    reporter = RecordingReporter(checkpoint_root=tmp_path / "ckpts")
    caplog.set_level(logging.INFO, logger="worker.training.recipe")

    result = recipe.train(
        spec,
        tiny_model_dir,
        small_chat_file,
        tmp_path / "adapter",
        reporter,
        validation_file=small_chat_file,
    )

    state = json.loads((reporter.checkpoint_copies[-1] / "training_state.json").read_text())
    config = json.loads((result.adapter_dir / "adapter_config.json").read_text())
    sampled = [len(c["examples"]) for c in evaluate if len(c["examples"]) != 12]
    seen = {
        "lr_scheduler": {c["kind"] for c in lr_factor},
        "group_size_multiplier": (
            {c["group_size_multiplier"] for c in plan_epoch},
            state["fingerprint"]["group_size_multiplier"],
        ),
        "valid_sample_size": set(sampled),
        "micro_batch_size": {c["micro_batch_size"] for c in step_micro_batches + evaluate},
        "micro_batch_tokens": {c["micro_batch_tokens"] for c in step_micro_batches + evaluate},
        "micro_batch_overhead_tokens": {c["overhead_tokens"] for c in step_micro_batches},
        "fast_dora": len(fast),
        "fused_adapters": len(fused),
        "loss_positions_only": {c["loss_positions_only"] for c in forward_backward},
        "device": {c["preferred"] for c in select_device},
        "precision": {str(c["dtype"]) for c in load_model},
        "sharding": set(asked_sharded),
        "base_model_name": config["base_model_name_or_path"],
        "job_id": {m.partition("]")[0] for m in caplog.messages},
    }
    assert seen == {
        "lr_scheduler": {"cosine"},
        "group_size_multiplier": ({3}, 3),
        "valid_sample_size": {2},
        "micro_batch_size": {1},
        "micro_batch_tokens": {4096},
        "micro_batch_overhead_tokens": {5},
        "fast_dora": 0,
        "fused_adapters": 0,
        "loss_positions_only": {False},
        "device": {"cpu"},
        "precision": {"torch.bfloat16"},
        "sharding": {True},
        "base_model_name": "my-base-model",
        "job_id": {"[job ftjob-options"},
    }
    assert set(seen) == {f.name for f in fields(EngineOptions)}


def test_default_engine_options_enable_the_fast_paths(
    tiny_model_dir: Path, small_chat_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The counterpart of the run above: the same wiring with the defaults turns them on.
    fast = _spy(monkeypatch, fast_dora, "enable_fast_dora")
    fused = _spy(monkeypatch, fused_adapter, "enable_fused_adapters")
    forward_backward = _spy(monkeypatch, recipe, "forward_backward")
    spec = TrainSpec(
        adapter=AdapterSpec(type="dora", r=4, alpha=8),
        n_epochs=1,
        batch_size=6,
        learning_rate=1e-2,
        seed=5,
        options=EngineOptions(device="cpu"),
    )
    recipe.train(spec, tiny_model_dir, small_chat_file, tmp_path / "a", RecordingReporter())
    assert (len(fast), len(fused)) == (1, 1)
    assert {c["loss_positions_only"] for c in forward_backward} == {True}


def test_train_spec_has_no_untyped_extras() -> None:
    names = {f.name for f in fields(TrainSpec)}
    assert "extra" not in names
    options = next(f for f in fields(TrainSpec) if f.name == "options")
    assert options.default is MISSING and options.default_factory is EngineOptions


# Job-level options: Job.options as stored by the API.


def test_job_options_read_the_training_keys_and_skip_the_platform_ones() -> None:
    stored = {
        "learning_rate": 3e-4,
        "max_seq_length": 512,
        "checkpoint_every_n_steps": 10,
        "keep_checkpoints": 3,
        "max_run_seconds": 600,
    }
    assert JobOptions.from_stored(stored) == JobOptions(
        learning_rate=3e-4, max_seq_length=512, checkpoint_every_n_steps=10
    )
    assert JobOptions.from_stored(None) == JobOptions.from_stored({}) == JobOptions()
    assert JobOptions.from_stored({"learning_rate": None}) == JobOptions()


def test_an_unknown_job_option_is_rejected_with_a_suggestion() -> None:
    with pytest.raises(ValueError, match="unknown job option 'max_seq_len'") as info:
        JobOptions.from_stored({"max_seq_len": 512})
    assert "did you mean 'max_seq_length'?" in str(info.value)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("learning_rate", 0),
        ("learning_rate", "1e-3"),
        ("learning_rate", True),
        ("max_seq_length", 1),
        ("checkpoint_every_n_steps", 2.5),
    ],
)
def test_a_bad_job_option_value_names_the_field(name: str, value: object) -> None:
    with pytest.raises(ValueError, match=f"^{name} must be"):
        JobOptions.from_stored({name: value})


def test_every_option_the_api_stores_is_known_to_the_worker() -> None:
    from api.schemas import JobCreateRequest

    request = JobCreateRequest.model_validate(
        {
            "model": "tiny-random-llama",
            "training_file": "file-x",
            "learning_rate": 2e-4,
            "max_seq_length": 256,
            "checkpoint_every_n_steps": 4,
            "keep_checkpoints": 2,
            "max_run_seconds": 60,
            "pool": "default",
            "precision": "bf16",
            "nodes": 2,
        }
    )
    from core.jobs.hyperparams import resolve_training

    stored = request.options()
    stored.pop("pool")  # core.jobs.lifecycle.create_job takes it out before storing
    # ... and adds the training options, resolved (the planner decides checkpointing).
    stored.update(resolve_training(request.training, None), gradient_checkpointing=False)
    # ... and, for a "ft:" model (continued fine-tuning), the parent's names.
    stored.update(parent="ft:tiny-random-llama:org:x:abc", parent_job_id="ftjob-x")
    parsed = JobOptions.from_stored(stored)
    assert parsed == JobOptions(
        learning_rate=2e-4,
        max_seq_length=256,
        checkpoint_every_n_steps=4,
        warmup_ratio=0.0,
        weight_decay=0.0,
        lr_scheduler="linear",
        gradient_checkpointing=False,
        micro_batch_tokens=8192,
        precision="bf16",
    )
    assert set(stored) == {f.name for f in fields(JobOptions)} | PLATFORM_JOB_OPTIONS


def _job(**options: object) -> Any:
    from core.db.models import Job

    return Job(
        id="ftjob-abc",
        model="smollm2-135m-instruct",
        adapter={"type": "lora", "r": 8, "alpha": 16, "dropout": 0.0},
        hyperparameters={"n_epochs": 2, "batch_size": 4, "learning_rate_multiplier": 2.0},
        options=options,
        seed=11,
    )


def test_build_spec_turns_job_options_into_the_typed_spec() -> None:
    from core.jobs.hyperparams import learning_rate
    from worker.tasks import build_spec

    spec = build_spec(_job(max_seq_length=128, checkpoint_every_n_steps=3, keep_checkpoints=1))
    assert spec.learning_rate == learning_rate("lora", 2.0)
    assert (spec.max_seq_length, spec.checkpoint_every_n_steps) == (128, 3)
    # A worker trains in the precision it detects unless the job forces one.
    assert spec.options == EngineOptions(
        base_model_name="smollm2-135m-instruct", job_id="ftjob-abc", precision="auto"
    )
    assert build_spec(_job(precision="fp32")).options.precision == "fp32"
    # The job's learning_rate is the one override: it replaces the multiplied base rate.
    assert build_spec(_job(learning_rate=5e-5)).learning_rate == 5e-5


def test_build_spec_rejects_an_unknown_job_option() -> None:
    from worker.tasks import build_spec

    with pytest.raises(ValueError, match="unknown job option 'learning_rat'"):
        build_spec(_job(learning_rat=1e-4))


def test_the_planners_sharding_reaches_the_engine() -> None:
    """A job that fits its pool's GPUs only sharded (core.jobs.planner) trains with FSDP: the
    plan's ``as_dict`` is the job's ``resources``, which build_spec reads."""
    from core.jobs.planner import Architecture, PlanRequest, place
    from tests.core.test_planner import LLAMA_8B
    from worker.tasks import build_spec

    arch = Architecture.from_config(LLAMA_8B)
    placed = place(arch, PlanRequest(max_seq_length=2048), {"v100": 32768}, {"v100": 4})
    assert placed.plan is not None
    job = _job()
    job.resources = placed.plan.as_dict()
    assert build_spec(job).options.sharding == "fsdp"
    job.resources = place(arch, PlanRequest(), {"a100": 81920}, {"a100": 4}).plan.as_dict()
    assert build_spec(job).options.sharding == "ddp"
    # Not planned (unknown architecture), or planned before sharding existed: data parallel.
    job.resources = None
    assert build_spec(job).options.sharding == "ddp"
    job.resources = {"gpus": 1, "estimated_peak_mib_per_device": 900}
    assert build_spec(job).options.sharding == "ddp"
