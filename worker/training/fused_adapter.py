"""LoRA and DoRA linear layers computed with fewer passes over activation-sized tensors.

PEFT's ``lora.Linear`` adds the adapter to the base output as separate element-wise steps::

    LoRA:  y = base(x) + (B (A x)) * s                       2 passes over [tokens, out]
    DoRA:  y = base(x) + (g - 1) * (W0 x) + g * (B (A x)) * s  5 passes (g = m / ||W0 + sBA||)

and autograd walks each of them again backwards. These memory-bound passes, with the weight
norm, were what DoRA cost over LoRA once the norm was factored (``bench/dora_overhead.py``).
Algebraically both are one matrix product added onto a (scaled) base output, and the scalings
belong on ``B`` (``[out, r]``), not on the activations::

    LoRA:  y = addmm(base(x), A x, (s B)^T)                     0 extra passes
    DoRA:  y = addmm(g * (W0 x) + bias, A x, (s g B)^T)         1 extra pass (2 backwards)

``addmm`` adds the product into its input inside the matrix multiply. The results equal PEFT's
within float rounding (the same terms, summed in another order); the gradients are the same
functions. ``g`` uses the factored, detached weight norm of :mod:`worker.training.fast_dora`, so
DoRA layers take the fused path only once :func:`~worker.training.fast_dora.enable_fast_dora`
ran.

Mixed precision: over a bf16 base PEFT keeps the adapter in float32 (its optimizer state and
updates stay exact); the fused path multiplies in the input's dtype with a bf16 view of ``A``
and ``s g B`` (autograd casts the gradients back to float32), while DoRA's norm and gain are
taken in float32 and rounded once. PEFT's bf16 forward instead runs the adapter product in
float32 and rounds the sum: the two agree within bf16 rounding. Under ``torch.autocast`` the
products run in the autocast dtype as PEFT's do.

Only the plain case is taken over: one active adapter without ``lora_bias``, no dropout in
training, an unmerged ``nn.Linear`` base whose weight and input share a floating dtype, and a
floating adapter. Anything else runs PEFT's own forward: dropout, mixed adapter batches, merged
or quantized (bitsandbytes) layers. Saving, loading and merging are
untouched: the layers keep their class's state dict and only their forward changes.
"""

from __future__ import annotations

from typing import Any, cast

import torch
import torch.nn.functional as F
from peft.tuners.lora.layer import Linear as LoraLinear

from worker.training.adapters import swap_module_class
from worker.training.fast_dora import FastDoraLinearLayer


class FusedLoraLinear(LoraLinear):
    """A PEFT ``lora.Linear`` (LoRA or DoRA) whose plain-case forward is fused; see module doc."""

    def _plain_adapter(self, x: torch.Tensor, kwargs: dict[str, Any]) -> str | None:
        """The active adapter's name if this call can take the fused path, else ``None``."""
        if kwargs or self.disable_adapters or self.merged:
            return None
        active = [a for a in self.active_adapters if a in self.lora_A]
        if len(active) != 1:
            return None
        name = active[0]
        base = self.get_base_layer()
        if type(base) is not torch.nn.Linear or self.fan_in_fan_out:
            return None
        if self.training and not isinstance(self.lora_dropout[name], torch.nn.Identity):
            return None
        variant = self.lora_variant.get(name) if hasattr(self, "lora_variant") else None
        magnitude = self.lora_magnitude_vector[name] if name in self.lora_magnitude_vector else None
        if variant is not None and not isinstance(magnitude, FastDoraLinearLayer):
            return None  # PEFT's own DoRA norm (fast_dora off), or a variant other than DoRA
        dtype = base.weight.dtype
        if not dtype.is_floating_point or x.dtype != dtype:
            return None
        if not self.lora_A[name].weight.dtype.is_floating_point:
            return None
        if getattr(self.lora_B[name], "bias", None) is not None:
            return None  # lora_bias=True: B carries a bias the fused product leaves out
        return name

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        """``base(x)`` plus the adapter; PEFT's forward wherever the fused path does not apply."""
        name = None if args else self._plain_adapter(x, kwargs)
        if name is None:
            return super().forward(x, *args, **kwargs)
        # _plain_adapter checked these are plain linear layers' tensors.
        base = self.get_base_layer()
        weight = cast(torch.Tensor, base.weight)
        bias = cast("torch.Tensor | None", base.bias)
        lead = x.shape[:-1]
        x2 = x.reshape(-1, x.shape[-1])
        lora_a = cast(torch.Tensor, self.lora_A[name].weight)
        lora_b = cast(torch.Tensor, self.lora_B[name].weight)
        scaling = self.scaling[name]
        down = F.linear(x2, lora_a.to(x.dtype))  # [tokens, r]
        if name in self.lora_magnitude_vector:
            magnitude = cast(FastDoraLinearLayer, self.lora_magnitude_vector[name])
            norm = magnitude._adapted_norm(weight, lora_a, lora_b, scaling)  # float32
            # [out]; the norm is detached, as in PEFT; the magnitude (float32) gets gradients.
            gain = cast(torch.Tensor, magnitude.weight).float() / norm
            plain = F.linear(x2, weight)
            out_gain = gain.to(plain.dtype)
            scaled = plain * out_gain if bias is None else torch.addcmul(bias, plain, out_gain)
            up = lora_b.float() * (scaling * gain).unsqueeze(1)
            out = torch.addmm(scaled, down, up.to(down.dtype).t())
        else:
            up = (lora_b * scaling).to(down.dtype)
            out = torch.addmm(F.linear(x2, weight, bias), down, up.t())
        return out.reshape(*lead, out.shape[-1])


def enable_fused_adapters(model: Any) -> int:
    """Switch every PEFT ``lora.Linear`` in ``model`` to :class:`FusedLoraLinear`.

    Parameters, buffers and state-dict keys stay as they are. Returns how many were switched.
    """
    return swap_module_class(model, LoraLinear, FusedLoraLinear)


def disable_fused_adapters(model: Any) -> int:
    """Undo :func:`enable_fused_adapters` (PEFT's own forward again)."""
    return swap_module_class(model, FusedLoraLinear, LoraLinear)
