"""DoRA without materialising the adapted weight: PEFT's results, less work per step.

PEFT's DoRA forward (``peft.tuners.lora.dora.DoraLinearLayer``) builds ``B @ A`` by pushing an
identity matrix of size ``in x in`` through both LoRA layers, adds it to the full base weight
``W0`` (``out x in``) and takes the row norms, on every forward pass. Only the row norms are
needed, and they factor through small matrices::

    ||W0_i + s (B A)_i||^2 = ||W0_i||^2 + 2 s <(W0 A^T)_i, B_i> + s^2 <(B (A A^T))_i, B_i>

``||W0_i||`` is constant (the base weight is frozen) and is cached; ``W0 A^T`` is ``out x r`` and
``A A^T`` is ``r x r``. This costs one ``out x in x r`` product and no ``out x in`` temporaries,
instead of an ``in x in x r`` product, an ``out x in x r`` product and three passes over an
``out x in`` matrix.

The norm is computed in float32 (also when training in bf16), as
``||W0_i|| * sqrt(1 + (2 s <.,.> + s^2 <.,.>) / ||W0_i||^2)``: when ``B = 0`` (a fresh adapter)
the correction is exactly 0, so the norm is exactly PEFT's ``||W0_i||``, the magnitude equals it,
and the adapted layer reproduces the base layer bit for bit. As in PEFT (and the paper, section
4.3) the norm is detached: it gets no gradient.

Over a quantized base (bitsandbytes NF4 or int8: QDoRA) PEFT de-quantizes the whole weight on
every forward pass. Here the weight is de-quantized only when the norm must be computed again,
once per optimizer step (see :meth:`FastDoraLinearLayer._adapted_norm`), and the base output
comes from the quantized layer itself.

Only the training/inference forward is replaced. Merging, saving and loading still use PEFT's
code, and the state dict is unchanged (the magnitude is the same parameter).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import torch
import torch.nn.functional as F
from peft.tuners.lora.dora import DoraLinearLayer

from worker.training.adapters import swap_module_class


def dora_row_norm(
    weight: torch.Tensor,
    lora_a: torch.Tensor,
    lora_b: torch.Tensor,
    scaling: float,
    base_norm: torch.Tensor | None = None,
) -> torch.Tensor:
    """Row norms of ``weight + scaling * lora_b @ lora_a`` in float32, without building it.

    Args:
        weight: the base weight ``W0``, ``[out, in]``.
        lora_a: ``A``, ``[r, in]``.
        lora_b: ``B``, ``[out, r]``.
        scaling: LoRA's ``alpha / r``.
        base_norm: ``torch.linalg.norm(W0.float(), dim=1)`` if already known.

    Returns:
        A detached float32 vector of ``out`` norms.
    """
    with torch.no_grad():
        w0 = weight.float()
        a = lora_a.float()
        b = lora_b.float()
        if base_norm is None:
            base_norm = torch.linalg.norm(w0, dim=1)
        cross = ((w0 @ a.T) * b).sum(dim=1)
        quad = ((b @ (a @ a.T)) * b).sum(dim=1)
        base_sq = base_norm.square()
        # A zero row of W0 gives 0/0; its norm is then just the LoRA row's.
        safe = torch.where(base_sq > 0, base_sq, torch.ones_like(base_sq))
        relative = (2.0 * scaling * cross + scaling * scaling * quad) / safe
        norm = base_norm * torch.sqrt(torch.clamp(1.0 + relative, min=0.0))
        zero_rows = base_sq == 0
        if bool(zero_rows.any()):
            norm = torch.where(zero_rows, scaling * torch.sqrt(quad.clamp(min=0.0)), norm)
        return norm


class FastDoraLinearLayer(DoraLinearLayer):
    """A ``DoraLinearLayer`` whose forward takes the weight norm with :func:`dora_row_norm`.

    Anything it does not handle (``fan_in_fan_out`` layers, non-2-D base weights, layers other
    than ``torch.nn.Linear`` and bitsandbytes' quantized linears) falls back to PEFT's own
    forward.
    """

    # (key of the tensors it was computed from, norm); see _adapted_norm.
    _fast_norm: tuple[tuple[object, ...], torch.Tensor] | None

    def _base_norm(self, weight: torch.Tensor, stored: torch.Tensor | None = None) -> torch.Tensor:
        # Keyed on the stored tensor's identity and version (a merge or reload writes a new
        # weight); ``stored``: the quantized tensor ``weight`` was de-quantized from.
        keyed = weight if stored is None else stored
        key = (keyed.data_ptr(), keyed._version, keyed.device, keyed.dtype)
        cached = getattr(self, "_fast_base_norm", None)
        if cached is None or cached[0] != key:
            with torch.no_grad():
                cached = (key, torch.linalg.norm(weight.float(), dim=1))
            self._fast_base_norm = cached
        return cached[1]

    def _adapted_norm(
        self,
        weight: torch.Tensor | Callable[[], torch.Tensor],
        lora_a: torch.Tensor,
        lora_b: torch.Tensor,
        scaling: float,
        stored: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """:func:`dora_row_norm`, reused until a weight changes.

        The norm is detached and depends only on weights that change at optimizer steps, so the
        micro-batches of one step (and evaluation between steps) share one computation. Keyed on
        each tensor's identity and in-place version counter (AdamW's default updates, a
        state-dict load and a merge all bump it). ``AdamW(fused=True)`` writes without bumping
        it: whoever steps an optimizer calls :func:`forget_adapted_norms` after each step.
        """
        keyed = stored if stored is not None else weight
        assert isinstance(keyed, torch.Tensor)
        key = tuple(
            (t.data_ptr(), t._version, t.device, t.dtype) for t in (keyed, lora_a, lora_b)
        ) + (scaling,)
        cached = getattr(self, "_fast_norm", None)
        if cached is None or cached[0] != key:
            # ``weight`` as a callable: a quantized base, de-quantized here only.
            w0 = weight() if callable(weight) else weight
            cached = (key, dora_row_norm(w0, lora_a, lora_b, scaling, self._base_norm(w0, keyed)))
            self._fast_norm = cached
        return cached[1]

    def adapted_norm(
        self,
        base_layer: torch.nn.Module,
        lora_a: torch.Tensor,
        lora_b: torch.Tensor,
        scaling: float,
    ) -> torch.Tensor:
        """The detached float32 row norms of ``base_layer``'s weight plus ``s B A``, reused
        until a weight changes; a quantized base is de-quantized only when they must be taken
        again."""
        if is_quantized(base_layer):
            from peft.utils.integrations import dequantize_module_weight

            def dequantized() -> torch.Tensor:
                with torch.no_grad():
                    return dequantize_module_weight(base_layer)

            stored = cast("torch.Tensor", base_layer.weight)
            return self._adapted_norm(dequantized, lora_a, lora_b, scaling, stored)
        return self._adapted_norm(cast(torch.Tensor, base_layer.weight), lora_a, lora_b, scaling)

    def forward(
        self,
        x: torch.Tensor,
        *,
        lora_A: torch.nn.Linear,
        lora_B: torch.nn.Linear,
        scaling: float,
        base_layer: torch.nn.Module,
        base_result: torch.Tensor | None = None,
        adapter_name: str = "default",
    ) -> torch.Tensor:
        """The DoRA term to add to the base layer's output (same contract as PEFT's)."""
        weight = getattr(base_layer, "weight", None)
        magnitude = self.weight
        plain = (
            isinstance(weight, torch.nn.Parameter)
            and weight.ndim == 2
            and weight.dtype.is_floating_point
            and not self.fan_in_fan_out
            and type(base_layer) is torch.nn.Linear
        )
        if not plain and is_quantized(base_layer) and isinstance(magnitude, torch.Tensor):
            return self._quantized_forward(
                x, lora_A, lora_B, scaling, base_layer, base_result, magnitude
            )
        if not plain or weight is None or not isinstance(magnitude, torch.Tensor):
            return super().forward(
                x,
                lora_A=lora_A,
                lora_B=lora_B,
                scaling=scaling,
                base_layer=base_layer,
                base_result=base_result,
                adapter_name=adapter_name,
            )
        norm = self._adapted_norm(weight, lora_A.weight, lora_B.weight, scaling).to(x.dtype)
        mag_norm_scale = (magnitude / norm).view(1, -1)
        lora_result = lora_B(lora_A(x))
        if base_result is not None:
            bias = getattr(base_layer, "bias", None)
            if bias is not None:
                base_result = base_result - bias
        else:
            base_result = F.linear(x, weight.to(x.dtype))
        return (mag_norm_scale - 1) * base_result + mag_norm_scale * lora_result * scaling

    def _quantized_forward(
        self,
        x: torch.Tensor,
        lora_A: torch.nn.Linear,
        lora_B: torch.nn.Linear,
        scaling: float,
        base_layer: torch.nn.Module,
        base_result: torch.Tensor | None,
        magnitude: torch.Tensor,
    ) -> torch.Tensor:
        """:meth:`forward` over a bitsandbytes layer: the weight is de-quantized for the norm
        only, when A, B (or the weight) changed; the base output is the quantized layer's."""
        norm = self.adapted_norm(base_layer, lora_A.weight, lora_B.weight, scaling)
        mag_norm_scale = (magnitude / norm.to(x.dtype)).view(1, -1)
        lora_result = lora_B(lora_A(x))
        if base_result is None:  # PEFT passes none when the adapter's dropout is active
            base_result = base_layer(x)
        bias = getattr(base_layer, "bias", None)
        if bias is not None:
            base_result = base_result - bias
        return (mag_norm_scale - 1) * base_result + mag_norm_scale * lora_result * scaling


def is_quantized(layer: torch.nn.Module) -> bool:
    """A bitsandbytes 4-bit or 8-bit linear layer (bitsandbytes not imported to find out)."""
    return type(layer).__name__ in ("Linear4bit", "Linear8bitLt") and type(
        layer
    ).__module__.startswith("bitsandbytes")


def enable_fast_dora(model: Any) -> int:
    """Switch every PEFT ``DoraLinearLayer`` in ``model`` to :class:`FastDoraLinearLayer`.

    The modules keep their parameters and state-dict keys; only their class changes.
    Returns how many layers were switched.
    """
    return swap_module_class(model, DoraLinearLayer, FastDoraLinearLayer)


def disable_fast_dora(model: Any) -> int:
    """Undo :func:`enable_fast_dora` (back to PEFT's default DoRA path)."""
    return swap_module_class(model, FastDoraLinearLayer, DoraLinearLayer)


def forget_adapted_norms(model: Any) -> None:
    """Drop the weight norms cached by :class:`FastDoraLinearLayer` (after an optimizer step)."""
    for module in model.modules():
        if isinstance(module, FastDoraLinearLayer):
            module._fast_norm = None
