"""The fused LoRA/DoRA forward (worker.training.fused_adapter) computes what PEFT computes:
same outputs, gradients and training, the same state dict, and PEFT's own forward wherever the
fused path does not apply."""

from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model
from peft.tuners.lora.layer import Linear as LoraLinear

from tests.worker.helpers import PIRATE, RecordingReporter
from worker.training.fast_dora import (
    FastDoraLinearLayer,
    enable_fast_dora,
    forget_adapted_norms,
)
from worker.training.fused_adapter import (
    FusedLoraLinear,
    disable_fused_adapters,
    enable_fused_adapters,
)
from worker.training.options import EngineOptions
from worker.training.recipe import train
from worker.training.spec import AdapterSpec, TrainSpec

IN, HIDDEN, OUT = 24, 40, 20


class Net(torch.nn.Module):
    """Two adapted layers, one with a bias and one without; 3-D input like a transformer's."""

    def __init__(self) -> None:
        super().__init__()
        self.up = torch.nn.Linear(IN, HIDDEN, bias=True)
        self.down = torch.nn.Linear(HIDDEN, OUT, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.silu(self.up(x)))


def adapted(dora: bool, dropout: float = 0.0, seed: int = 0):
    """A PEFT model with B and the magnitude moved off their initial values."""
    torch.manual_seed(seed)
    config = LoraConfig(
        r=4, lora_alpha=8, target_modules=["up", "down"], use_dora=dora, lora_dropout=dropout
    )
    model = get_peft_model(Net(), config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.3)
            if "magnitude" in name:
                p.mul_(1 + 0.2 * torch.randn_like(p))
    return model


def fused_copy(model, dora: bool):
    fused = copy.deepcopy(model)
    if dora:
        assert enable_fast_dora(fused) == 2
    assert enable_fused_adapters(fused) == 2
    return fused


def train_steps(model, steps: int = 4, **adamw) -> list[float]:
    torch.manual_seed(1)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-2, **adamw)
    opt.register_step_post_hook(lambda *_: forget_adapted_norms(model))
    x, target = torch.randn(3, 7, IN), torch.randn(3, 7, OUT)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = F.mse_loss(model(x), target)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("dora", [False, True], ids=["lora", "dora"])
def test_fused_forward_and_gradients_equal_peft(dora: bool) -> None:
    reference = adapted(dora)
    fused = fused_copy(reference, dora)
    x = torch.randn(3, 7, IN)
    want, got = reference(x), fused(x)
    assert got.shape == want.shape == (3, 7, OUT)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    want.square().sum().backward()
    got.square().sum().backward()
    grads = dict(fused.named_parameters())
    for name, p in reference.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(grads[name].grad, p.grad, rtol=1e-5, atol=1e-5, msg=name)


@pytest.mark.parametrize("adamw", [{}, {"fused": True}], ids=["adamw", "fused-adamw"])
@pytest.mark.parametrize("dora", [False, True], ids=["lora", "dora"])
def test_fused_training_follows_peft_step_for_step(dora: bool, adamw: dict) -> None:
    # DoRA's cached weight norm must be recomputed after every optimizer step, also when the
    # optimizer's update does not bump the version counters (fused AdamW).
    reference = adapted(dora)
    fused = fused_copy(reference, dora)
    assert train_steps(fused, **adamw) == pytest.approx(train_steps(reference, **adamw), rel=1e-5)
    for (name, p), q in zip(reference.named_parameters(), fused.parameters(), strict=True):
        torch.testing.assert_close(q, p, rtol=1e-5, atol=1e-6, msg=name)


def test_dora_norm_is_recomputed_after_a_state_dict_load() -> None:
    reference = adapted(dora=True, seed=0)
    fused = fused_copy(reference, dora=True)
    x = torch.randn(2, 5, IN)
    fused(x)  # fills the norm cache
    other = adapted(dora=True, seed=5)
    fused.load_state_dict(other.state_dict())
    torch.testing.assert_close(fused(x), other(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dora", [False, True], ids=["lora", "dora"])
def test_fused_layers_keep_the_state_dict_and_switch_back(dora: bool) -> None:
    model = adapted(dora)
    keys = list(model.state_dict().keys())
    fused = fused_copy(model, dora)
    assert list(fused.state_dict().keys()) == keys
    layer = fused.base_model.model.up
    assert type(layer) is FusedLoraLinear
    assert disable_fused_adapters(fused) == 2 and type(layer) is LoraLinear


def test_dropout_in_training_takes_peft_forward() -> None:
    reference = adapted(dora=False, dropout=0.5)
    fused = fused_copy(reference, dora=False)
    x = torch.randn(3, 7, IN)
    torch.manual_seed(9)
    want = reference(x)
    torch.manual_seed(9)
    got = fused(x)
    assert torch.equal(got, want)  # the same dropout masks: PEFT's own code ran
    fused.eval()
    reference.eval()
    torch.testing.assert_close(fused(x), reference(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dora", [False, True], ids=["lora", "dora"])
def test_disabled_and_merged_adapters_take_peft_forward(dora: bool) -> None:
    reference = adapted(dora)
    fused = fused_copy(reference, dora)
    x = torch.randn(3, 7, IN)
    with fused.disable_adapter(), reference.disable_adapter():
        assert torch.equal(fused(x), reference(x))
    want = reference(x)
    fused.merge_adapter()
    torch.testing.assert_close(fused(x), want, rtol=1e-4, atol=1e-5)
    fused.unmerge_adapter()
    torch.testing.assert_close(fused(x), want, rtol=1e-4, atol=1e-5)


def test_lora_bias_takes_peft_forward() -> None:
    torch.manual_seed(0)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["up", "down"], lora_bias=True)
    reference = get_peft_model(Net(), config)
    with torch.no_grad():
        for name, p in reference.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.3)
    fused = fused_copy(reference, dora=False)
    x = torch.randn(3, 7, IN)
    assert torch.equal(fused(x), reference(x))


def test_dora_without_the_fast_norm_takes_peft_forward() -> None:
    reference = adapted(dora=True)
    fused = copy.deepcopy(reference)
    enable_fused_adapters(fused)  # fast_dora not enabled: PEFT's DoRA, untouched
    magnitude = fused.base_model.model.up.lora_magnitude_vector["default"]
    assert type(magnitude) is not FastDoraLinearLayer
    x = torch.randn(3, 7, IN)
    assert torch.equal(fused(x), reference(x))


@pytest.mark.parametrize("method", ["lora", "dora"])
def test_engine_trains_the_same_with_and_without_the_fused_forward(
    method: str, tiny_model_dir: Path, tmp_path: Path
) -> None:
    lines = PIRATE.read_text(encoding="utf-8").splitlines()[:8]
    data = tmp_path / "train.jsonl"
    data.write_text("\n".join(lines) + "\n", encoding="utf-8")
    spec = TrainSpec(
        adapter=AdapterSpec(type=method, r=4, alpha=8),
        n_epochs=1,
        batch_size=4,
        learning_rate=2e-2,
        seed=3,
        options=EngineOptions(device="cpu"),
    )
    fused, plain = RecordingReporter(), RecordingReporter()
    train(spec, tiny_model_dir, data, tmp_path / "fused", fused)
    off = replace(spec, options=replace(spec.options, fused_adapters=False))
    train(off, tiny_model_dir, data, tmp_path / "plain", plain)
    assert len(fused.losses) == 2
    assert fused.losses == pytest.approx(plain.losses, rel=1e-5)
