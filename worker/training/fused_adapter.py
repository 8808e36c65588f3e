"""LoRA and DoRA linear layers computed with fewer passes over activation-sized tensors.

PEFT's ``lora.Linear`` adds the adapter to the base output as separate element-wise steps::

    LoRA:  y = base(x) + (B (A x)) * s                       2 passes over [tokens, out]
    DoRA:  y = base(x) + (g - 1) * (W0 x) + g * (B (A x)) * s  5 passes (g = m / ||W0 + sBA||)

and autograd walks each of them again backwards. These memory-bound passes, with the weight
norm, were what DoRA cost over LoRA once the norm was factored (``bench/dora_overhead.py``).
Algebraically both are one matrix product accumulated into the base output, DoRA then scaled
per output feature, and LoRA's scaling belongs on ``B`` (``[out, r]``), not on the activations::

    LoRA:  y = (W0 x + bias).addmm_(A x, (s B)^T)                0 extra passes
    DoRA:  y = g * (W0 x).addmm_(A x, (s B)^T) + bias            1 extra pass (2 backwards)

``addmm_`` adds the product into the base output in place, inside the matrix multiply: no copy
of the base output (an out-of-place ``addmm`` first copies it) and no separate addition. It is
safe because nothing saves the base output for its backward (a matrix product saves its inputs).
The results equal PEFT's within float rounding (the same terms, summed in another order); the
gradients are the same functions. ``g`` uses the factored, detached weight norm of
:mod:`worker.training.fast_dora`, so DoRA layers take the fused path only once
:func:`~worker.training.fast_dora.enable_fast_dora` ran. (unsloth's LoRA kernels use the same
in-place accumulation.)

Mixed precision: over a bf16 base PEFT keeps the adapter in float32 (its optimizer state and
updates stay exact); the fused path multiplies in the input's dtype with a bf16 view of ``A``
and ``s B`` (autograd casts the gradients back to float32), while DoRA's norm and gain are
taken in float32 and rounded once. PEFT's bf16 forward instead runs the adapter product in
float32 and rounds the sum: the two agree within bf16 rounding. Under ``torch.autocast`` the
products run in the autocast dtype as PEFT's do.

Quantized bases (bitsandbytes NF4 or int8, PEFT's ``lora.bnb`` layers) take the same path: the
base output is the quantized layer's own (it de-quantizes and multiplies in its compute dtype,
and returns the input's), and the adapter is accumulated into it in the activations' dtype:
float32 on a QLoRA model as PEFT prepares it (norms, embeddings and head in float32), as PEFT
computes it. PEFT's bitsandbytes forward copies the base output defensively and adds the
adapter term in separate passes (DoRA's ``(g - 1) * base + g * lora * s``: five).

Only the plain case is taken over: one active adapter without ``lora_bias``, no dropout in
training, an unmerged ``nn.Linear`` base whose weight and input share a floating dtype (or a
bitsandbytes base and a floating input), and a floating adapter. Anything else runs PEFT's
own forward: dropout, mixed adapter batches, merged layers, ``fan_in_fan_out``. Saving, loading
and merging are untouched: the layers keep their class's state dict and only their forward
changes.
"""

from __future__ import annotations

import functools
from typing import Any, cast

import torch
import torch.nn.functional as F
from peft.tuners.lora.layer import Linear as LoraLinear

from worker.training.adapters import swap_module_class
from worker.training.fast_dora import FastDoraLinearLayer, is_quantized


class _FusedForward:
    """The fused forward, mixed into a PEFT LoRA layer class (plain or bitsandbytes)."""

    # Attributes of PEFT's LoraLayer, which the classes this is mixed into provide.
    lora_A: Any
    lora_B: Any
    lora_dropout: Any
    lora_magnitude_vector: Any
    scaling: dict[str, float]
    active_adapters: list[str]
    disable_adapters: bool
    merged: bool
    fan_in_fan_out: bool
    training: bool
    get_base_layer: Any

    def _plain_adapter(self, x: torch.Tensor, kwargs: dict[str, Any]) -> str | None:
        """The active adapter's name if this call can take the fused path, else ``None``."""
        if kwargs or self.disable_adapters or self.merged:
            return None
        active = [a for a in self.active_adapters if a in self.lora_A]
        if len(active) != 1:
            return None
        name = active[0]
        if not _fusable_base(self.get_base_layer(), x.dtype) or self.fan_in_fan_out:
            return None
        if self.training and not isinstance(self.lora_dropout[name], torch.nn.Identity):
            return None
        variant = self.lora_variant.get(name) if hasattr(self, "lora_variant") else None
        magnitude = self.lora_magnitude_vector[name] if name in self.lora_magnitude_vector else None
        if variant is not None and not isinstance(magnitude, FastDoraLinearLayer):
            return None  # PEFT's own DoRA norm (fast_dora off), or a variant other than DoRA
        if not self.lora_A[name].weight.dtype.is_floating_point:
            return None
        if getattr(self.lora_B[name], "bias", None) is not None:
            return None  # lora_bias=True: B carries a bias the fused product leaves out
        return name

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        """``base(x)`` plus the adapter; PEFT's forward wherever the fused path does not apply."""
        name = None if args else self._plain_adapter(x, kwargs)
        if name is None:
            return super().forward(x, *args, **kwargs)  # type: ignore[misc]
        base = self.get_base_layer()
        bias = cast("torch.Tensor | None", base.bias)
        lead = x.shape[:-1]
        x2 = x.reshape(-1, x.shape[-1])
        lora_a = cast(torch.Tensor, self.lora_A[name].weight)
        lora_b = cast(torch.Tensor, self.lora_B[name].weight)
        scaling = self.scaling[name]
        magnitude = self.lora_magnitude_vector[name] if name in self.lora_magnitude_vector else None
        # DoRA scales W0 x + s B A x; the bias is added after the scaling.
        out = _base_output(base, x2, with_bias=magnitude is None)
        # In the base output's dtype (under autocast the base's product may not be in x's).
        down = F.linear(x2, lora_a.to(x.dtype)).to(out.dtype)  # [tokens, r]
        out.addmm_(down, (lora_b * scaling).to(out.dtype).t())
        if magnitude is not None:
            fast = cast(FastDoraLinearLayer, magnitude)
            norm = fast.adapted_norm(base, lora_a, lora_b, scaling)  # float32, detached
            # [out]; the magnitude (float32) gets its gradient through the cast.
            gain = (cast(torch.Tensor, fast.weight).float() / norm).to(out.dtype)
            out = out * gain if bias is None else torch.addcmul(bias.to(out.dtype), out, gain)
        return out.reshape(*lead, out.shape[-1])


def _fusable_base(base: torch.nn.Module, dtype: torch.dtype) -> bool:
    """Whether the fused path can add an adapter into ``base``'s output for input of ``dtype``:
    a plain ``nn.Linear`` with weights of that floating dtype, or a bitsandbytes layer."""
    if not dtype.is_floating_point:
        return False
    if type(base) is torch.nn.Linear:
        return base.weight.dtype == dtype
    # A bitsandbytes layer casts the input to its compute dtype and its output back to the
    # input's: over a QLoRA base prepared by PEFT (norms, embeddings and head in float32) the
    # activations are float32 while the 4-bit products run in bf16.
    return is_quantized(base)


def _base_output(base: torch.nn.Module, x2: torch.Tensor, with_bias: bool) -> torch.Tensor:
    """``W0 x (+ bias)`` as a fresh ``[tokens, out]`` tensor the adapter may be added into."""
    if type(base) is torch.nn.Linear:
        return F.linear(x2, base.weight, base.bias if with_bias else None)
    out = cast(torch.Tensor, base(x2))
    if out._is_view() or out.dtype != x2.dtype:
        out = out.to(x2.dtype, copy=True)  # never write into a tensor another one views
    bias = getattr(base, "bias", None)
    if not with_bias and bias is not None:
        out.sub_(bias.to(out.dtype))
    return out


class FusedLoraLinear(_FusedForward, LoraLinear):
    """A PEFT ``lora.Linear`` (LoRA or DoRA) whose plain-case forward is fused; see module doc."""


@functools.cache
def _bnb_layer_classes() -> tuple[tuple[type[torch.nn.Module], type[torch.nn.Module]], ...]:
    """(PEFT's bitsandbytes LoRA layer class, its fused subclass) for those PEFT defines
    (only where bitsandbytes is installed); the subclasses are made once."""
    try:
        from peft.tuners.lora import bnb
    except ImportError:
        return ()
    attrs = {"__module__": __name__, "__doc__": "A PEFT bitsandbytes LoRA layer, fused forward."}
    return tuple(
        (cls, type(f"Fused{cls.__name__}", (_FusedForward, cls), attrs))
        for cls in (getattr(bnb, "Linear4bit", None), getattr(bnb, "Linear8bitLt", None))
        if cls is not None
    )


def enable_fused_adapters(model: Any) -> int:
    """Switch every PEFT LoRA linear layer in ``model`` (plain or bitsandbytes) to its fused
    class. Parameters, buffers and state-dict keys stay as they are. Returns how many were
    switched."""
    n = swap_module_class(model, LoraLinear, FusedLoraLinear)
    for peft_class, fused in _bnb_layer_classes():
        n += swap_module_class(model, peft_class, fused)
    return n


def disable_fused_adapters(model: Any) -> int:
    """Undo :func:`enable_fused_adapters` (PEFT's own forward again)."""
    n = swap_module_class(model, FusedLoraLinear, LoraLinear)
    for peft_class, fused in _bnb_layer_classes():
        n += swap_module_class(model, fused, peft_class)
    return n
