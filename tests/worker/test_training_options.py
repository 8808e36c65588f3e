"""A job's training options reach the engine; the planner counts what PEFT builds; out of
memory is classified as such (worker/failures.py)."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytest

from core.jobs.planner import ALL_LINEAR_TARGETS, Architecture, PlanRequest, trainable_parameters
from worker.training.options import JobOptions
from worker.training.spec import TrainingProcessLost

TRAINING = {
    "warmup_ratio": 0.25,
    "weight_decay": 0.05,
    "lr_scheduler": "cosine",
    "gradient_checkpointing": True,
    "micro_batch_tokens": 512,
}


def _job(**options: object) -> Any:
    from core.db.models import Job

    return Job(
        id="ftjob-opts",
        model="tiny-random-llama",
        adapter={"type": "lora", "r": 4, "alpha": 8, "dropout": 0.0},
        hyperparameters={"n_epochs": 2, "batch_size": 3, "learning_rate_multiplier": 1.0},
        options=options,
        seed=5,
    )


def test_build_spec_carries_the_training_options():
    from worker.tasks import build_spec

    spec = build_spec(_job(**TRAINING))
    assert (spec.warmup_ratio, spec.weight_decay, spec.gradient_checkpointing) == (
        0.25,
        0.05,
        True,
    )
    assert (spec.options.lr_scheduler, spec.options.micro_batch_tokens) == ("cosine", 512)
    assert spec.options.job_id == "ftjob-opts"
    default = build_spec(_job())
    assert (default.warmup_ratio, default.weight_decay, default.gradient_checkpointing) == (
        0.0,
        0.0,
        False,
    )
    assert (default.options.lr_scheduler, default.options.micro_batch_tokens) == ("linear", 8192)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"warmup_ratio": 1.5}, "warmup_ratio must be a number >= 0 and < 1.0"),
        ({"weight_decay": -1}, "weight_decay must be a number >= 0"),
        ({"lr_scheduler": "step"}, "lr_scheduler must be one of linear, cosine, constant"),
        ({"gradient_checkpointing": "yes"}, "gradient_checkpointing must be True or False"),
        ({"micro_batch_tokens": 0}, "micro_batch_tokens must be an integer >= 1"),
    ],
)
def test_bad_stored_training_options_fail_before_any_model_loads(options, message):
    with pytest.raises(ValueError, match=message):
        JobOptions.from_stored(options)


def test_the_options_reach_the_optimizer_scheduler_and_model(tiny_model_dir, small_chat_file):
    import torch

    from worker.tasks import build_spec
    from worker.training.parallel import SINGLE
    from worker.training.recipe import _Run

    spec = build_spec(_job(**TRAINING))
    run = _Run(spec, _Quiet(), torch.device("cpu"), torch.float32, SINGLE)
    run.setup(tiny_model_dir, small_chat_file, None, None)
    assert run.model.base_model.model.is_gradient_checkpointing
    decays = sorted(group["weight_decay"] for group in run.optimizer.param_groups)
    assert decays == [0.05]  # LoRA has matrices only: all decayed
    total = run.total_steps  # 2 epochs x ceil(12 / 3)
    factors = [run.scheduler.lr_lambdas[0](step) for step in range(total)]
    warmup = 2  # ceil(0.25 * 8)
    assert factors[0] < factors[1] < factors[warmup] == 1.0  # linear warmup
    assert factors[-1] < 0.1 and factors[warmup + 1] > 0.9  # then a cosine decay
    run.train()  # and it trains with them
    assert run.state.step == total


def test_the_planner_counts_what_peft_trains_for_each_architecture():
    """ "all-linear" on Llama, Qwen2, Mistral and Gemma: PEFT's trainable parameters and the
    base model's parameters are those the planner counts (biases aside)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    shape = dict(
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=512,
        max_position_embeddings=256,
    )
    for model_type in ("llama", "qwen2", "mistral", "gemma"):
        config = AutoConfig.for_model(model_type, **shape)
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config)
        arch = Architecture.from_config(config.to_dict())
        biases = sum(p.numel() for n, p in model.named_parameters() if n.endswith(".bias"))
        assert arch.parameters == sum(p.numel() for p in model.parameters()) - biases, model_type
        peft = get_peft_model(model, LoraConfig(r=8, target_modules="all-linear", use_dora=True))
        trained = sum(p.numel() for p in peft.parameters() if p.requires_grad)
        request = PlanRequest(adapter_type="dora", rank=8)
        assert trainable_parameters(arch, request) == trained, model_type
        wrapped = {n.rsplit(".", 1)[-1] for n, _ in peft.named_modules() if n.endswith("_proj")}
        assert wrapped == set(ALL_LINEAR_TARGETS), model_type


def test_allocation_failures_are_out_of_memory_with_what_to_change():
    from core.jobs.status import FailureCode
    from worker.failures import classify

    cpu = RuntimeError(
        "[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory: "
        "you tried to allocate 68719476736 bytes. Error code 12 (Cannot allocate memory)"
    )
    code, message, param = classify(cpu)
    assert code == FailureCode.OUT_OF_MEMORY and param == "max_seq_length"
    assert "max_seq_length" in message and "gradient_checkpointing" in message
    assert "GPUs" in message and "worker ran out of memory" in message
    gpu = classify(RuntimeError("CUDA error: out of memory"))
    assert gpu[0] == FailureCode.OUT_OF_MEMORY and "GPU ran out of memory" in gpu[1]
    assert classify(MemoryError())[0] == FailureCode.OUT_OF_MEMORY
    # Other runtime errors are not memory.
    assert classify(RuntimeError("shape mismatch"))[0] == FailureCode.INTERNAL_ERROR


def test_a_host_oom_kill_is_told_from_a_lost_process(tmp_path: Path, monkeypatch):
    from core.jobs.status import FailureCode
    from worker import failures
    from worker.oom import OomCounter

    events = tmp_path / "memory.events"
    events.write_text("low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n")
    monkeypatch.setattr(failures, "OOM_COUNTER", OomCounter(events, "memory cgroup"))
    assert failures.oom_kills() == 1
    killed = TrainingProcessLost("training process 0 of 1 died", exit_code=-signal.SIGKILL)

    # SIGKILL and no new kill counted since the run started: a lost process, retried.
    assert failures.host_oom_killed(killed, kills_before=1) is False
    assert failures.classify(killed, oom_kills_before=1)[0] == FailureCode.TRAINING_PROCESS_LOST
    # The kernel counted a kill since: out of memory, with the advice.
    events.write_text("oom 2\noom_kill 2\n")
    code, message, param = failures.classify(killed, oom_kills_before=1)
    assert code == FailureCode.OUT_OF_MEMORY and param == "max_seq_length"
    assert "OOM killer ended the training process" in message
    assert "memory cgroup" in message and 'adapter.quantization "nf4"' in message
    # Counted by the host's vmstat (no readable cgroup): said so.
    monkeypatch.setattr(failures, "OOM_COUNTER", OomCounter(events, "host"))
    assert "host's kernel" in failures.classify(killed, oom_kills_before=1)[1]
    # A crash (a non-zero exit) is never taken for an OOM kill.
    crashed = TrainingProcessLost("training process 1 of 2 died", exit_code=1)
    assert failures.classify(crashed, oom_kills_before=1)[0] == FailureCode.TRAINING_PROCESS_LOST
    # Where the counter cannot be read, SIGKILL alone is not proof: lost, with the hint.
    monkeypatch.setattr(failures, "OOM_COUNTER", None)
    code, message, _ = failures.classify(killed, oom_kills_before=1)
    assert code == FailureCode.TRAINING_PROCESS_LOST and "out of memory" in message
    assert "max_seq_length" in message
    # The exit code survives pickling (a rank's error travels to its launcher).
    import pickle

    assert pickle.loads(pickle.dumps(killed)).exit_code == -signal.SIGKILL


class _Quiet:
    def metrics(self, *args: object, **kwargs: object) -> None: ...

    def message(self, text: str, level: str = "info") -> None: ...

    def should_stop(self) -> bool:
        return False

    def should_pause(self) -> bool:
        return False

    def save_checkpoint(self, info: object) -> None: ...
