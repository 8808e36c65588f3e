"""PEFT config construction from an AdapterSpec."""

from __future__ import annotations

import pytest
from peft import TaskType

from worker.training.adapters import build_peft_config
from worker.training.spec import AdapterSpec


def test_dora_spec_sets_use_dora() -> None:
    cfg = build_peft_config(AdapterSpec(type="dora", r=8, alpha=16, dropout=0.05))
    assert cfg.use_dora is True
    assert (cfg.r, cfg.lora_alpha, cfg.lora_dropout) == (8, 16, 0.05)
    assert cfg.task_type == TaskType.CAUSAL_LM
    assert cfg.target_modules == "all-linear"


def test_lora_spec_with_explicit_modules() -> None:
    cfg = build_peft_config(AdapterSpec(type="lora", target_modules=("q_proj", "v_proj")))
    assert cfg.use_dora is False
    assert set(cfg.target_modules) == {"q_proj", "v_proj"}


@pytest.mark.parametrize(
    "spec",
    [
        AdapterSpec(type="ia3"),  # type: ignore[arg-type]
        AdapterSpec(r=0),
        AdapterSpec(alpha=0),
        AdapterSpec(dropout=1.0),
        AdapterSpec(target_modules=()),
    ],
)
def test_invalid_specs_are_rejected(spec: AdapterSpec) -> None:
    with pytest.raises(ValueError):
        build_peft_config(spec)
