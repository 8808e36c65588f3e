"""A quantized frozen base (QLoRA / QDoRA) with bitsandbytes: loading, recording, de-quantizing.

``"nf4"`` stores each base linear layer in 4-bit NormalFloat with double quantization (the
QLoRA recipe) and computes in the run's precision (bf16 where the hardware has it); ``"int8"``
uses LLM.int8(). Embeddings, norms and the output head stay unquantized; the adapter, its
optimizer state and the loss stay in float32, as PEFT does. The engine's fused forward
(``worker.training.fused_adapter``) adds the adapter into the quantized layer's own output, and
its fast DoRA norm de-quantizes each weight once per optimizer step, not on every pass.

An adapter trained on a quantized base learned to correct the *quantized* weights, so its
directory records how the base was quantized (:data:`QUANTIZATION_FILE`). Serving loads the
base the same way for it, and merging de-quantizes the base first (``dequantized_base``) and
then folds the adapter in: the merged model computes what the adapter was trained against.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from transformers import BitsAndBytesConfig, PreTrainedModel

QUANTIZATION_FILE = "base_quantization.json"
"""Written next to ``adapter_config.json`` by a run on a quantized base (absent otherwise)."""

QUANTIZATIONS = ("nf4", "int8")


def bnb_config(method: str, compute_dtype: torch.dtype) -> BitsAndBytesConfig:
    """The ``BitsAndBytesConfig`` of ``method`` ("nf4" or "int8")."""
    from transformers import BitsAndBytesConfig

    if method == "nf4":
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute_dtype,
            # Stored as bf16-sized words so that sharding (FSDP) can split them like weights.
            bnb_4bit_quant_storage=torch.bfloat16,
        )
    if method == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    raise ValueError(f"quantization must be one of nf4, int8 or null, got {method!r}")


def load_quantized(
    model_dir: Path, method: str, compute_dtype: torch.dtype, device: torch.device
) -> PreTrainedModel:
    """The causal LM in ``model_dir`` with its linear layers quantized by ``method``.

    Raises:
        RuntimeError: bitsandbytes is not installed (the ``worker`` extra installs it).
    """
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as exc:
        raise RuntimeError(
            "training or serving on a quantized base needs bitsandbytes "
            "(pip install 'dorado[worker]')"
        ) from exc
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        model_dir,
        quantization_config=bnb_config(method, compute_dtype),
        dtype=compute_dtype,
        device_map={"": str(device)},
    )
    keep_standard_4bit_layout(model)
    return model


def keep_standard_4bit_layout(model: torch.nn.Module) -> int:
    """Stop bitsandbytes from repacking 4-bit weights for its CPU inference kernel.

    On a CPU with AVX512-BF16, ``Linear4bit``'s first forward in eval mode without gradients
    (a validation pass, a generation) rewrites the weight into another layout in place. Its
    matrix product knows that layout, but ``dequantize_4bit`` (which PEFT's DoRA uses for the
    weight norm, and merging for the weights) does not: every DoRA output after the first
    evaluation would use a garbage norm. Returns how many layers were pinned.
    """
    import bitsandbytes as bnb

    n = 0
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False
            n += 1
    return n


def write_quantization(adapter_dir: Path, method: str, compute_dtype: torch.dtype) -> None:
    """Record in ``adapter_dir`` that its base was quantized with ``method``."""
    record = {"method": method, "compute_dtype": str(compute_dtype).removeprefix("torch.")}
    (adapter_dir / QUANTIZATION_FILE).write_text(json.dumps(record) + "\n", encoding="utf-8")


def read_quantization(adapter_dir: Path) -> dict[str, Any] | None:
    """What :func:`write_quantization` recorded, or ``None`` for a full-precision base."""
    path = Path(adapter_dir) / QUANTIZATION_FILE
    if not path.is_file():
        return None
    record = json.loads(path.read_text(encoding="utf-8"))
    if record.get("method") not in QUANTIZATIONS:
        raise ValueError(f"{path}: unknown quantization {record.get('method')!r}")
    return dict(record)


def compute_dtype_of(record: dict[str, Any]) -> torch.dtype:
    """The compute dtype a quantization record names (float32 if it names none)."""
    dtype = getattr(torch, str(record.get("compute_dtype", "float32")), None)
    return dtype if isinstance(dtype, torch.dtype) else torch.float32


@torch.no_grad()
def dequantize_linear_layers(model: torch.nn.Module, dtype: torch.dtype) -> int:
    """Replace each bitsandbytes 4-/8-bit linear layer in ``model`` by an ``nn.Linear`` holding
    its de-quantized weight (in ``dtype``). Returns how many were replaced."""
    import bitsandbytes as bnb
    from peft.utils.integrations import dequantize_bnb_weight

    replaced = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if not isinstance(child, (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt)):
                continue
            weight = dequantize_bnb_weight(
                child.weight,  # type: ignore[arg-type]  # a bnb Params4bit / Int8Params
                state=getattr(child, "state", None),
            )
            linear = torch.nn.Linear(
                child.in_features, child.out_features, bias=child.bias is not None
            )
            linear.weight = torch.nn.Parameter(weight.to(dtype), requires_grad=False)
            if child.bias is not None:
                linear.bias = torch.nn.Parameter(child.bias.data.to(dtype), requires_grad=False)
            setattr(parent, name, linear)
            replaced += 1
    return replaced


def dequantized_base(
    model_dir: Path, method: str, compute_dtype: torch.dtype, dtype: torch.dtype
) -> PreTrainedModel:
    """The base model as the adapter saw it: quantized with ``method``, then de-quantized into
    plain ``nn.Linear`` layers of ``dtype`` (for merging)."""
    model = load_quantized(model_dir, method, compute_dtype, torch.device("cpu"))
    dequantize_linear_layers(model, dtype)
    for attr in ("quantization_config", "_pre_quantization_dtype"):
        if hasattr(model.config, attr):
            delattr(model.config, attr)
    model.hf_quantizer = None  # type: ignore[assignment]
    # transformers refuses to cast a model loaded with a quantizer; it holds none any more.
    torch.nn.Module.to(model, dtype)
    return model
