"""DoRA's step-time overhead over LoRA: the engine's fused forward next to PEFT's paths.

Same model (SmolLM2-135M-Instruct, CPU; float32 unless ``--precision``), r=16 alpha=32
all-linear, the same fixed optimizer steps (the engine's micro-batches of the skewed chat set,
batch 8) for five configurations: LoRA and DoRA with the engine's fused forward
(``worker.training.fused_adapter``; DoRA with the factored, cached weight norm), LoRA with PEFT's
forward, DoRA with PEFT's forward and the factored norm, and DoRA with PEFT's default path; the
steps are interleaved across the five. Also times the weight-norm computation alone for
SmolLM2's layer shapes. ::

    .venv/bin/python bench/dora_overhead.py              # ~2-4 minutes on 2 CPU cores
    .venv/bin/python bench/dora_overhead.py --steps 2 --repeats 1
    .venv/bin/python bench/dora_overhead.py --precision bf16   # or nf4: NF4 base, bf16 compute

``--precision`` loads the base as the engine does for that precision (``bf16``: bf16 weights,
float32 adapter; ``nf4``: bitsandbytes NF4 computing in bf16, prepared by PEFT for k-bit
training, so its activations stay float32).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from bench_common import smollm2_dir
from skewed_chat import make_examples

from worker.training.adapters import attach_adapter
from worker.training.data import parse_line, plan_epoch, step_micro_batches, tokenize_conversation
from worker.training.fast_dora import disable_fast_dora, dora_row_norm, enable_fast_dora
from worker.training.fused_adapter import enable_fused_adapters
from worker.training.recipe import forward_backward

PRECISIONS = {
    "fp32": (torch.float32, None),
    "bf16": (torch.bfloat16, None),
    "nf4": (torch.bfloat16, "nf4"),
}
"""``--precision`` -> (the base's dtype, its quantization)."""


def make_stepper(config: str, model_dir, precision: str = "fp32"):
    """A function running one optimizer step of ``config`` on given micro-batches; seconds."""
    from worker.training.recipe import _load_model
    from worker.training.spec import AdapterSpec

    dtype, quantization = PRECISIONS[precision]
    base, _ = _load_model(model_dir, torch.device("cpu"), dtype, quantization)
    torch.manual_seed(0)
    method = "lora" if config.startswith("lora") else "dora"
    spec = AdapterSpec(type=method, r=16, alpha=32, quantization=quantization)  # type: ignore[arg-type]
    model = attach_adapter(base, spec)
    if config in ("dora-fast", "dora-fused"):
        enable_fast_dora(model)
    else:
        disable_fast_dora(model)
    if config.endswith("-fused"):
        enable_fused_adapters(model)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    cpu = torch.device("cpu")

    def one(micro) -> float:
        began = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        forward_backward(model, micro, cpu)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        return time.perf_counter() - began

    return one


def _time(fn, repeats: int) -> float:
    """Median milliseconds of ``repeats`` calls (a shared machine has slow spells)."""
    fn()
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        fn()
        times.append(time.perf_counter() - began)
    return statistics.median(times) * 1e3


def norm_times(repeats: int = 50) -> None:
    from functools import partial

    from peft.tuners.lora.dora import DoraLinearLayer

    def peft(layer, w, a_lin, b_lin) -> torch.Tensor:
        lw = layer.get_lora_weight(a_lin, b_lin)
        return layer.get_weight_norm(w, lw, 2.0)

    print("weight norm alone (no grad, float32, r=16):")
    for out, inp in [(576, 576), (192, 576), (1536, 576), (576, 1536)]:
        torch.manual_seed(0)
        w = torch.randn(out, inp)
        a_lin = torch.nn.Linear(inp, 16, bias=False)
        b_lin = torch.nn.Linear(16, out, bias=False)
        torch.nn.init.normal_(b_lin.weight, std=0.02)
        slow = partial(peft, DoraLinearLayer(fan_in_fan_out=False), w, a_lin, b_lin)
        base_norm = torch.linalg.norm(w, dim=1)
        fast = partial(dora_row_norm, w, a_lin.weight, b_lin.weight, 2.0, base_norm)
        with torch.no_grad():
            want = slow()
            diff = float(((want - fast()).abs() / want).max())
            t_peft, t_fast = _time(slow, repeats), _time(fast, repeats)
        print(
            f"  {out:5d}x{inp:<5d} peft {t_peft:.3f} ms  fast {t_fast:.3f} ms  "
            f"({t_peft / t_fast:.1f}x)  max rel diff {diff:.1e}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3, help="distinct optimizer steps")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--precision", choices=sorted(PRECISIONS), default="fp32")
    args = parser.parse_args()
    from transformers import AutoTokenizer

    model_dir = smollm2_dir()
    tok = AutoTokenizer.from_pretrained(model_dir)
    examples = [
        tokenize_conversation(tok, parse_line(row)) for row in make_examples(8 * args.steps, 1)
    ]
    lengths = [len(e) for e in examples]
    plan = plan_epoch(lengths, 8, 0, 0)
    steps = [step_micro_batches(examples, b, lengths, 0) for b in plan]
    tokens = sum(mb.n_tokens for s in steps for mb in s)
    print(f"{len(steps)} steps x {args.repeats} repeats, {tokens} real tokens per pass", flush=True)
    norm_times()
    configs = ("lora-fused", "dora-fused", "lora", "dora-fast", "dora-peft")
    steppers = {c: make_stepper(c, model_dir, args.precision) for c in configs}
    for c in configs:
        steppers[c](steps[0])  # warm-up: allocator, first-call overheads
    # Interleaved, so that a slow spell of a shared machine hits every configuration alike.
    times: dict[str, list[float]] = {c: [] for c in configs}
    for _ in range(args.repeats):
        for micro in steps:
            for c in configs:
                times[c].append(steppers[c](micro))
    medians = {}
    for config in configs:
        medians[config] = statistics.median(times[config])
        print(
            f"{config:10s} median step {medians[config]:.2f} s  (all: "
            + ", ".join(f"{t:.2f}" for t in times[config])
            + ")",
            flush=True,
        )
    print(
        f"DoRA/LoRA step time: engine {medians['dora-fused'] / medians['lora-fused']:.3f}x "
        f"(fused forward, factored norm); PEFT forward + factored norm "
        f"{medians['dora-fast'] / medians['lora']:.3f}x; "
        f"PEFT default {medians['dora-peft'] / medians['lora']:.3f}x"
    )
    print(
        f"engine / PEFT step time: LoRA {medians['lora-fused'] / medians['lora']:.3f}x, "
        f"DoRA {medians['dora-fused'] / medians['dora-peft']:.3f}x"
    )


if __name__ == "__main__":
    main()
