"""Which dtype a run's frozen base model computes in: fp32, bf16 or fp16, chosen or detected.

bf16 halves the base model's memory and, on hardware with bf16 matrix units (CUDA GPUs since
Ampere, Intel CPUs with AMX, CPUs with AVX512-BF16), runs matrix products several times faster
than fp32 (measured on a 2-core Xeon with AMX: ~2.1 TFLOP/s bf16 vs ~0.33 fp32). The adapter,
its optimizer state and the loss stay in float32 either way: PEFT creates the adapter weights in
float32 over a bf16 base, the fused/fast-DoRA forward computes DoRA's norm in float32, and the
loss is taken on float32 logits. Without bf16 hardware (an AMD EPYC before Zen 4, say) bf16 on a
CPU is emulated and slower than fp32, so the automatic choice reads the CPU's flags instead of
assuming them.

fp16 is for GPUs without bf16 (before Ampere: V100, T4), whose tensor cores multiply fp16 many
times faster than fp32. Its narrow exponent lets small activation gradients underflow to zero
in the backward pass through the fp16 base, so an fp16 run scales its loss with a
``torch.amp.GradScaler`` (:func:`needs_loss_scaling`); bf16 has fp32's exponent range and
needs none.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch

from worker.training.options import PRECISIONS

CPU_BF16_FLAGS = ("amx_bf16", "avx512_bf16")
"""``/proc/cpuinfo`` flags of CPUs whose bf16 matrix products beat fp32 (oneDNN uses them)."""


@functools.cache
def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The feature flags of the first CPU in ``cpuinfo`` (empty where the file is missing)."""
    try:
        text = cpuinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def cpu_has_fast_bf16(flags: frozenset[str] | None = None) -> bool:
    """True when this CPU multiplies bf16 matrices in hardware (AMX or AVX512-BF16)."""
    flags = cpu_flags() if flags is None else flags
    return any(flag in flags for flag in CPU_BF16_FLAGS)


def resolve_dtype(
    requested: str | None, device: torch.device, *, fast_cpu_bf16: bool | None = None
) -> torch.dtype:
    """The base model's dtype for ``requested`` precision on ``device``.

    ``None``: bf16 on a CUDA GPU that supports it, fp32 elsewhere. ``"auto"``: the same, fp16
    (with loss scaling) on a CUDA GPU without bf16, and bf16 on a CPU with fast bf16
    (``fast_cpu_bf16``, detected when ``None``). ``"fp32"``, ``"bf16"`` and ``"fp16"`` force one.

    Raises:
        ValueError: an unknown name, or bf16 forced on a GPU without it.
    """
    if requested is not None and requested not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {requested!r}")
    cuda_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    if requested == "fp32":
        return torch.float32
    if requested == "fp16":
        return torch.float16
    if requested == "bf16":
        if device.type == "cuda" and not cuda_bf16:
            raise ValueError('this GPU has no bf16: use precision "fp32"')
        return torch.bfloat16
    if cuda_bf16:
        return torch.bfloat16
    if requested == "auto" and device.type == "cuda":
        return torch.float16
    if requested == "auto" and device.type == "cpu":
        fast = cpu_has_fast_bf16() if fast_cpu_bf16 is None else fast_cpu_bf16
        return torch.bfloat16 if fast else torch.float32
    return torch.float32


def needs_loss_scaling(dtype: torch.dtype) -> bool:
    """Whether a run whose base computes in ``dtype`` scales its loss (fp16 only)."""
    return dtype == torch.float16


def grad_scaler(dtype: torch.dtype, device: torch.device) -> torch.amp.GradScaler:
    """The run's loss scaler: PyTorch's dynamic one for fp16, a disabled (pass-through) one
    otherwise, so that the step's code is the same for every precision."""
    return torch.amp.GradScaler(device.type, enabled=needs_loss_scaling(dtype))
