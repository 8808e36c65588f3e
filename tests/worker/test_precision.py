"""Mixed precision: the precision option and its CPU detection, and the fused LoRA/DoRA forward
over a bf16 base with float32 adapters (or under bf16 autocast) against PEFT's."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model

from tests.worker.helpers import RecordingReporter, assert_same_adapter
from worker.training.checkpoints import STATE_PT
from worker.training.fast_dora import enable_fast_dora
from worker.training.fused_adapter import FusedLoraLinear, enable_fused_adapters
from worker.training.options import EngineOptions, JobOptions
from worker.training.precision import (
    cpu_flags,
    cpu_has_fast_bf16,
    grad_scaler,
    needs_loss_scaling,
    resolve_dtype,
)
from worker.training.recipe import train
from worker.training.spec import AdapterSpec, TrainingPaused, TrainSpec

CPU = torch.device("cpu")


def test_cpu_flags_are_read_from_cpuinfo(tmp_path: Path) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f amx_bf16 amx_tile\n\n")
    assert cpu_flags(info) == {"fpu", "avx2", "avx512f", "amx_bf16", "amx_tile"}
    assert cpu_flags(tmp_path / "missing") == frozenset()
    assert cpu_has_fast_bf16(frozenset({"avx2", "amx_bf16"}))
    assert cpu_has_fast_bf16(frozenset({"avx512_bf16"}))
    assert not cpu_has_fast_bf16(frozenset({"avx2", "avx512f"}))  # e.g. an older AMD EPYC


def test_resolve_dtype_detects_or_forces() -> None:
    assert resolve_dtype(None, CPU, fast_cpu_bf16=True) == torch.float32  # the engine default
    assert resolve_dtype("auto", CPU, fast_cpu_bf16=True) == torch.bfloat16
    assert resolve_dtype("auto", CPU, fast_cpu_bf16=False) == torch.float32
    assert resolve_dtype("fp32", CPU, fast_cpu_bf16=True) == torch.float32
    assert resolve_dtype("bf16", CPU, fast_cpu_bf16=False) == torch.bfloat16
    assert resolve_dtype("auto", torch.device("mps"), fast_cpu_bf16=True) == torch.float32
    assert resolve_dtype("fp16", CPU, fast_cpu_bf16=True) == torch.float16
    with pytest.raises(ValueError, match="precision must be one of"):
        resolve_dtype("fp8", CPU)


def test_precision_option_is_validated() -> None:
    assert EngineOptions(precision="bf16").precision == "bf16"
    assert EngineOptions(precision="fp16").precision == "fp16"
    assert EngineOptions().precision is None
    with pytest.raises(ValueError, match="precision"):
        EngineOptions(precision="half")  # type: ignore[arg-type]
    assert JobOptions.from_stored({"precision": "fp32"}).precision == "fp32"
    with pytest.raises(ValueError, match="precision"):
        JobOptions.from_stored({"precision": "bfloat16"})


class Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.up = torch.nn.Linear(64, 96, bias=True)
        self.down = torch.nn.Linear(96, 48, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.silu(self.up(x)))


def _adapted(dora: bool, base_dtype: torch.dtype):
    """A PEFT model over a ``base_dtype`` base (PEFT keeps the adapter float32), with B and the
    magnitude moved off their initial values; and a fused copy of it."""
    torch.manual_seed(0)
    config = LoraConfig(r=8, lora_alpha=16, target_modules=["up", "down"], use_dora=dora)
    model = get_peft_model(Net().to(base_dtype), config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.3)
            if "magnitude" in name:
                p.mul_(1 + 0.2 * torch.randn_like(p))
    assert all(p.dtype == torch.float32 for p in model.parameters() if p.requires_grad)
    fused = copy.deepcopy(model)
    if dora:
        enable_fast_dora(fused)
    assert enable_fused_adapters(fused) == 2
    return model, fused


def _grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.float() for n, p in model.named_parameters() if p.grad is not None}


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


@pytest.mark.parametrize("dora", [False, True], ids=["lora", "dora"])
def test_fused_forward_over_a_bf16_base_equals_peft_within_bf16_rounding(dora: bool) -> None:
    peft_model, fused = _adapted(dora, torch.bfloat16)
    x = torch.randn(3, 17, 64).bfloat16()
    layer = fused.base_model.model.up
    assert isinstance(layer, FusedLoraLinear)
    assert layer._plain_adapter(x, {}) == "default"  # the fused path runs, not PEFT's fallback
    want = peft_model(x)
    got = fused(x)
    assert got.dtype == want.dtype == torch.bfloat16
    assert _relative(got, want) < 2e-2
    want.float().square().mean().backward()
    got.float().square().mean().backward()
    expected, actual = _grads(peft_model), _grads(fused)
    assert expected.keys() == actual.keys() and expected
    for name in expected:
        assert actual[name].dtype == torch.float32  # gradients land on the float32 adapter
        assert _relative(actual[name], expected[name]) < 5e-2, name


@pytest.mark.parametrize("dora", [False, True], ids=["lora", "dora"])
def test_fused_forward_under_bf16_autocast_equals_peft(dora: bool) -> None:
    peft_model, fused = _adapted(dora, torch.float32)
    x = torch.randn(3, 17, 64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want = peft_model(x).float()
        got = fused(x).float()
    exact = peft_model(x)
    assert _relative(got, want) < 2e-2
    assert _relative(got, exact) < 2e-2


def test_bf16_training_tracks_fp32(tiny_model_dir: Path, small_chat_file: Path, tmp_path) -> None:
    losses = {}
    for precision in ("fp32", "bf16"):
        reporter = RecordingReporter()
        spec = TrainSpec(
            adapter=AdapterSpec(type="dora", r=4, alpha=8),
            n_epochs=1,
            batch_size=4,
            learning_rate=1e-2,
            seed=3,
            options=EngineOptions(device="cpu", precision=precision),  # type: ignore[arg-type]
        )
        train(spec, tiny_model_dir, small_chat_file, tmp_path / precision, reporter)
        losses[precision] = reporter.losses
    assert losses["bf16"] != losses["fp32"]  # it did run in another precision
    assert losses["bf16"] == pytest.approx(losses["fp32"], rel=1e-2)


def test_only_fp16_scales_its_loss() -> None:
    assert needs_loss_scaling(torch.float16)
    assert not needs_loss_scaling(torch.bfloat16) and not needs_loss_scaling(torch.float32)
    assert grad_scaler(torch.float16, CPU).is_enabled()
    assert not grad_scaler(torch.bfloat16, CPU).is_enabled()


def _fp16_spec(kind: str) -> TrainSpec:
    return TrainSpec(
        adapter=AdapterSpec(type=kind, r=4, alpha=8),
        n_epochs=2,
        batch_size=4,
        learning_rate=1e-2,
        seed=7,
        options=EngineOptions(device="cpu", precision="fp16"),
    )


@pytest.mark.parametrize("kind", ["lora", "dora"])
def test_fp16_trains_with_a_loss_scale_and_resumes_exactly(
    kind: str, tiny_model_dir: Path, small_chat_file: Path, tmp_path: Path
) -> None:
    """An fp16 base with float32 adapters: the loss scaler runs (its scale is in the
    checkpoint), the adapter learns, and a paused run resumes to the same weights."""
    from safetensors.torch import load_file

    spec = _fp16_spec(kind)
    whole = RecordingReporter()
    result = train(spec, tiny_model_dir, small_chat_file, tmp_path / "whole", whole)
    assert all(math.isfinite(loss) for loss in whole.losses)
    assert whole.losses[-1] < whole.losses[0]
    weights = load_file(result.adapter_dir / "adapter_model.safetensors")
    assert all(w.dtype == torch.float32 for w in weights.values())
    assert any("lora_B" in k and w.abs().max() > 0 for k, w in weights.items())

    paused = RecordingReporter(pause_after=2, checkpoint_root=tmp_path / "ckpts")
    with pytest.raises(TrainingPaused):
        train(spec, tiny_model_dir, small_chat_file, tmp_path / "paused", paused)
    checkpoint = paused.checkpoint_copies[-1]
    state = torch.load(checkpoint / STATE_PT, weights_only=True)
    assert state["grad_scaler"]["scale"] > 1  # the dynamic loss scale, kept for the resume
    resumed = RecordingReporter()
    again = train(
        spec, tiny_model_dir, small_chat_file, tmp_path / "again", resumed, resume_from=checkpoint
    )
    assert resumed.losses == pytest.approx(whole.losses[2:], rel=1e-6)
    assert_same_adapter(again.adapter_dir, result.adapter_dir, rtol=0, atol=0)


def test_an_overflowing_fp16_step_is_skipped_not_applied(
    tiny_model_dir: Path, small_chat_file: Path, tmp_path: Path, monkeypatch
) -> None:
    """A loss scale so large that the scaled gradients overflow: the scaler skips those steps
    (the adapter does not move) and halves the scale until the step fits, as PyTorch's does."""
    from safetensors.torch import load_file

    def huge(dtype: torch.dtype, device: torch.device) -> torch.amp.GradScaler:
        return torch.amp.GradScaler(device.type, init_scale=2.0**120, enabled=True)

    monkeypatch.setattr("worker.training.recipe.grad_scaler", huge)
    spec = TrainSpec(
        adapter=AdapterSpec(type="lora", r=4, alpha=8),
        n_epochs=1,
        batch_size=4,
        learning_rate=1e-2,
        seed=7,
        options=EngineOptions(device="cpu", precision="fp16"),
    )
    reporter = RecordingReporter(pause_after=1, checkpoint_root=tmp_path / "ckpts")
    with pytest.raises(TrainingPaused):
        train(spec, tiny_model_dir, small_chat_file, tmp_path / "out", reporter)
    checkpoint = reporter.checkpoint_copies[-1]
    scale = torch.load(checkpoint / STATE_PT, weights_only=True)["grad_scaler"]["scale"]
    assert scale == 2.0**119  # one overflow seen, the scale halved
    lora_b = [
        w for k, w in load_file(checkpoint / "adapter_model.safetensors").items() if "lora_B" in k
    ]
    assert lora_b and all(float(w.abs().max()) == 0 for w in lora_b)  # the step was skipped
    state = torch.load(checkpoint / STATE_PT, weights_only=True)
    assert state["scheduler"]["last_epoch"] == 0  # and the schedule did not advance
