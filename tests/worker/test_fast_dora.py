"""DoRA done right: identity at initialisation, the paper's formula after training, and the
factored weight norm (worker.training.fast_dora) equal to PEFT's default path."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model

from worker.training.fast_dora import (
    FastDoraLinearLayer,
    disable_fast_dora,
    dora_row_norm,
    enable_fast_dora,
)

IN, OUT, R, ALPHA = 24, 20, 4, 8


class Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(IN, OUT, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


def dora_net(seed: int = 0, fast: bool = False):
    torch.manual_seed(seed)
    base = Net()
    reference = copy.deepcopy(base)
    config = LoraConfig(r=R, lora_alpha=ALPHA, target_modules=["proj"], use_dora=True)
    model = get_peft_model(base, config)
    if fast:
        assert enable_fast_dora(model) == 1
    return model, reference


def train_a_few_steps(model, steps: int = 5) -> None:
    """Move A, B and the magnitude away from their initial values."""
    torch.manual_seed(1)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-2)
    x, target = torch.randn(32, IN), torch.randn(32, OUT)
    for _ in range(steps):
        opt.zero_grad()
        F.mse_loss(model(x), target).backward()
        opt.step()


def layer_parts(model):
    layer = model.base_model.model.proj
    return (
        layer.base_layer.weight.detach(),
        layer.base_layer.bias.detach(),
        layer.lora_A["default"].weight.detach(),
        layer.lora_B["default"].weight.detach(),
        layer.lora_magnitude_vector["default"].weight.detach(),
        layer.scaling["default"],
    )


@pytest.mark.parametrize("fast", [False, True], ids=["peft", "fast"])
def test_fresh_dora_layer_reproduces_the_base_layer_exactly(fast: bool) -> None:
    model, reference = dora_net(fast=fast)
    w0, _, _, b, m, _ = layer_parts(model)
    assert torch.count_nonzero(b) == 0
    assert torch.equal(m, torch.linalg.norm(w0, dim=1))  # m initialised to ||W0|| row-wise
    x = torch.randn(16, IN)
    model.train()
    with torch.no_grad():
        assert torch.equal(model(x), reference(x))


@pytest.mark.parametrize("fast", [False, True], ids=["peft", "fast"])
def test_trained_dora_layer_equals_the_formula_by_hand(fast: bool) -> None:
    model, _ = dora_net(fast=fast)
    train_a_few_steps(model)
    w0, bias, a, b, m, s = layer_parts(model)
    assert torch.count_nonzero(b) > 0 and not torch.allclose(m, torch.linalg.norm(w0, dim=1))
    # W' = m * (W0 + s B A) / ||W0 + s B A||, one norm per output row, written out in float64.
    v = w0.double() + s * (b.double() @ a.double())
    row_norms = torch.sqrt((v * v).sum(dim=1, keepdim=True))
    w_dora = m.double().view(-1, 1) * v / row_norms
    x = torch.randn(16, IN)
    with torch.no_grad():
        got = model(x).double()
    want = x.double() @ w_dora.T + bias.double()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_fast_path_gives_peft_default_outputs_gradients_and_training() -> None:
    peft_model, _ = dora_net(seed=3)
    fast_model, _ = dora_net(seed=3, fast=True)
    train_a_few_steps(peft_model, steps=3)
    train_a_few_steps(fast_model, steps=3)
    for p, q in zip(peft_model.parameters(), fast_model.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    x = torch.randn(8, IN)
    for model in (peft_model, fast_model):
        model.zero_grad()
        model(x).square().sum().backward()
    for (name, p), q in zip(peft_model.named_parameters(), fast_model.parameters(), strict=True):
        if p.requires_grad:
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-6, msg=name)


def test_fast_path_is_switchable_and_keeps_the_state_dict() -> None:
    model, _ = dora_net()
    keys = model.state_dict().keys()
    assert enable_fast_dora(model) == 1
    dora = model.base_model.model.proj.lora_magnitude_vector["default"]
    assert type(dora) is FastDoraLinearLayer
    assert model.state_dict().keys() == keys
    assert disable_fast_dora(model) == 1 and type(dora) is not FastDoraLinearLayer


@pytest.mark.parametrize(("out", "inp", "r"), [(64, 48, 4), (96, 96, 16), (32, 80, 1)])
def test_row_norm_equals_the_norm_of_the_materialised_weight(out: int, inp: int, r: int) -> None:
    torch.manual_seed(out + r)
    w0, a, b = torch.randn(out, inp), torch.randn(r, inp) / inp**0.5, torch.randn(out, r)
    s = 2.0
    want = torch.linalg.norm(w0.double() + s * b.double() @ a.double(), dim=1)
    got = dora_row_norm(w0, a, b, s)
    assert got.dtype == torch.float32 and not got.requires_grad
    torch.testing.assert_close(got.double(), want, rtol=2e-6, atol=1e-6)
    # B = 0: exactly the base norm, not merely close.
    assert torch.equal(dora_row_norm(w0, a, torch.zeros_like(b), s), torch.linalg.norm(w0, dim=1))
    # A bf16 base weight still gets a float32 norm of that weight.
    w16 = w0.bfloat16()
    want16 = torch.linalg.norm(w16.double() + s * b.double() @ a.double(), dim=1)
    torch.testing.assert_close(dora_row_norm(w16, a, b, s).double(), want16, rtol=2e-6, atol=1e-6)


def test_zero_base_rows_fall_back_to_the_lora_row_norm() -> None:
    torch.manual_seed(0)
    w0, a, b = torch.randn(6, 10), torch.randn(2, 10), torch.randn(6, 2)
    w0[2] = 0
    want = torch.linalg.norm(w0 + 0.5 * b @ a, dim=1)
    torch.testing.assert_close(dora_row_norm(w0, a, b, 0.5), want, rtol=1e-5, atol=1e-6)
