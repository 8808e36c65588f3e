"""PEFT adapter construction: LoRA, or DoRA (``use_dora=True``), from an :class:`AdapterSpec`."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from peft import LoraConfig, PeftModel, TaskType, get_peft_model

from worker.training.spec import AdapterSpec

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel

logger = logging.getLogger(__name__)

ADAPTER_TYPES = ("lora", "dora")


def validate_adapter_spec(spec: AdapterSpec) -> None:
    """Raise ``ValueError`` with a readable message if ``spec`` cannot build an adapter."""
    if spec.type not in ADAPTER_TYPES:
        raise ValueError(f"adapter type must be one of {ADAPTER_TYPES}, got {spec.type!r}")
    if spec.r < 1:
        raise ValueError(f"adapter rank r must be >= 1, got {spec.r}")
    if spec.alpha <= 0:
        raise ValueError(f"adapter alpha must be > 0, got {spec.alpha}")
    if not 0.0 <= spec.dropout < 1.0:
        raise ValueError(f"adapter dropout must be in [0, 1), got {spec.dropout}")
    if not spec.target_modules:
        raise ValueError("adapter target_modules must not be empty")
    if spec.quantization not in (None, "nf4", "int8"):
        raise ValueError(f'quantization must be "nf4", "int8" or None, got {spec.quantization!r}')
    if spec.quantization == "int8" and spec.type == "dora":
        # PEFT's DoRA initialisation de-quantizes the 8-bit weight and leaves the CPU layer
        # without its scales (the first forward fails): QDoRA is NF4 only.
        raise ValueError('a DoRA adapter needs quantization "nf4" or None, not "int8"')


def build_peft_config(spec: AdapterSpec) -> LoraConfig:
    """Return the PEFT ``LoraConfig`` for ``spec`` (``use_dora=True`` when type is "dora").

    ``target_modules`` is passed through: "all-linear" (every linear layer but the output head)
    or explicit module names such as ``("q_proj", "v_proj")``.
    """
    validate_adapter_spec(spec)
    targets = (
        spec.target_modules if isinstance(spec.target_modules, str) else list(spec.target_modules)
    )
    return LoraConfig(
        task_type=TaskType.CAUSAL_LM,
        r=spec.r,
        lora_alpha=spec.alpha,
        lora_dropout=spec.dropout,
        target_modules=targets,
        use_dora=spec.type == "dora",
        bias="none",
    )


def attach_adapter(model: PreTrainedModel, spec: AdapterSpec) -> PeftModel:
    """Wrap ``model`` with a fresh, trainable adapter; the base weights are frozen.

    The adapter's random initialisation (LoRA's A matrices) draws from torch's global RNG, so
    seed before calling this for reproducible runs. At initialisation the adapted model computes
    exactly what the base model computes (B = 0; DoRA's magnitude = the base column norms).

    On a quantized base (``spec.quantization``) PEFT's ``prepare_model_for_kbit_training``
    runs first: it freezes the base and keeps its unquantized parameters (norms, embeddings,
    head) in float32; gradient checkpointing stays the caller's choice.
    """
    if spec.quantization is not None:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    peft_model = get_peft_model(model, build_peft_config(spec))
    trainable, total = peft_model.get_nb_trainable_parameters()
    logger.info(
        "Attached %s adapter r=%d alpha=%d: %d trainable of %d parameters",
        spec.type,
        spec.r,
        spec.alpha,
        trainable,
        total,
    )
    return peft_model


def load_adapter_weights(model: PeftModel, adapter_dir: Path) -> int:
    """Start ``model``'s adapter from a saved one (continued fine-tuning): the weights of
    ``adapter_dir/adapter_model.safetensors``, which must be of the same type, rank and target
    modules. Returns the number of tensors loaded.

    Raises:
        ValueError: the saved adapter does not fit the attached one.
    """
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    weights = load_file(str(Path(adapter_dir) / "adapter_model.safetensors"))
    expected = {k for k in model.state_dict() if "lora_" in k}
    try:
        # torch's (missing_keys, unexpected_keys) tuple; PEFT annotates it as a bare namedtuple.
        result: Any = set_peft_model_state_dict(model, weights)
    except RuntimeError as exc:  # a shape mismatch: another rank
        raise ValueError(f"the parent adapter does not fit this job's adapter: {exc}") from exc
    missing = sorted(k for k in result.missing_keys if k in expected)
    unexpected = sorted(result.unexpected_keys)
    if missing or unexpected or not weights:
        raise ValueError(
            "the parent adapter does not fit this job's adapter "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    return len(weights)


def swap_module_class(
    model: Any, current: type[torch.nn.Module], new: type[torch.nn.Module]
) -> int:
    """Give every module of exactly class ``current`` in ``model`` the class ``new``.

    For subclasses that only override methods (a faster forward): parameters, buffers and
    state-dict keys stay as they are. Returns how many modules were switched.
    """
    n = 0
    for module in model.modules():
        if type(module) is current:
            module.__class__ = new
            n += 1
    return n
