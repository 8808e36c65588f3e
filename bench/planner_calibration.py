"""Calibrate the memory planner (core/jobs/planner.py) against measured peaks on a CPU.

For each model and sequence length, one optimizer step of the engine's own code (the adapter
attached as a job attaches it, fast DoRA and fused adapters on, the loss on every token: the
worst case) runs under torch's profiler with its memory timeline; the peak of live tensors is
compared with the planner's terms for the same job in fp32 (the CPU engine's dtype), headroom
left out (the profiler sees tensors, not the allocator). The process's peak RSS is shown too.

    PYTHONPATH=$PWD .venv/bin/python bench/planner_calibration.py [--lengths 512 1024]

Takes about a minute per SmolLM2 case on 2 CPU cores. Figures: bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
from pathlib import Path

import torch
from bench_common import ROOT, smollm2_dir

sys.path.insert(0, str(ROOT))

from core.jobs.planner import MIB, Architecture, PlanRequest, plan  # noqa: E402
from worker.training.adapters import attach_adapter  # noqa: E402
from worker.training.data import TokenizedExample, collate  # noqa: E402
from worker.training.recipe import build_optimizer, forward_backward  # noqa: E402
from worker.training.spec import AdapterSpec, TrainSpec  # noqa: E402


def tiny_dir() -> Path:
    from worker.model_builders import build_builtin
    from worker.model_store import COMPLETE_MARKER

    dest = ROOT / ".dorado-test" / "models" / "tiny-random-llama"
    if not (dest / COMPLETE_MARKER).exists():
        build_builtin("tiny-random-llama", dest)
        (dest / COMPLETE_MARKER).touch()
    return dest


def peak_live_bytes(step) -> int:
    """The peak of live CPU tensors (bytes) while ``step()`` runs, from the memory timeline."""
    from torch.profiler import ProfilerActivity, profile
    from torch.profiler._memory_profiler import MemoryProfileTimeline

    with profile(
        activities=[ProfilerActivity.CPU],
        profile_memory=True,
        record_shapes=True,
        with_stack=True,
    ) as prof:
        step()
    timeline = MemoryProfileTimeline(prof._memory_profile())
    _times, sizes = timeline._coalesce_timeline("cpu")
    return int(max(sum(row) for row in sizes))


def measure(model_dir: Path, adapter: AdapterSpec, length: int, checkpointing: bool) -> int:
    from transformers import AutoModelForCausalLM

    from worker.training.fast_dora import enable_fast_dora
    from worker.training.fused_adapter import enable_fused_adapters

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    if checkpointing:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model = attach_adapter(base, adapter)
    if adapter.type == "dora":
        enable_fast_dora(model)
    enable_fused_adapters(model)
    model.train()
    spec = TrainSpec(adapter=adapter, n_epochs=1, batch_size=1, learning_rate=1e-4, seed=0)
    optimizer = build_optimizer(model, spec)
    ids = tuple(int(t) for t in torch.randint(3, 1000, (length,)))
    batch = collate([TokenizedExample(input_ids=ids, labels=ids)], pad_token_id=2)

    def step() -> None:
        forward_backward(model, [batch], torch.device("cpu"))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()  # the first step creates AdamW's state: measure a steady one
    return peak_live_bytes(step)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[512, 1024])
    parser.add_argument("--models", nargs="+", default=["tiny-random-llama", "smollm2"])
    parser.add_argument("--adapters", nargs="+", default=["lora", "dora"])
    parser.add_argument("--checkpointing", action="store_true", help="also with checkpointing")
    args = parser.parse_args()
    torch.set_num_threads(2)
    dirs = {"tiny-random-llama": tiny_dir, "smollm2": smollm2_dir}
    rows = []
    for name in args.models:
        model_dir = dirs[name]()
        arch = Architecture.from_config(json.loads((model_dir / "config.json").read_text()))
        for kind in args.adapters:
            adapter = AdapterSpec(type=kind, r=16, alpha=32)
            for ckpt in [False, True] if args.checkpointing else [False]:
                for length in args.lengths:
                    measured = measure(model_dir, adapter, length, ckpt)
                    planned = plan(
                        arch,
                        PlanRequest(
                            adapter_type=kind,
                            rank=16,
                            max_seq_length=length,
                            micro_batch_tokens=length,
                            batch_size=1,
                            gradient_checkpointing=ckpt,
                            weight_bytes=4,
                            cuda=False,
                        ),
                    )
                    tensors = planned.peak - planned.headroom
                    row = {
                        "model": name,
                        "adapter": kind,
                        "checkpointing": ckpt,
                        "tokens": length,
                        "measured_mib": round(measured / MIB, 1),
                        "planned_mib": round(tensors / MIB, 1),
                        "error_pct": round(100 * (tensors - measured) / measured, 1),
                        "terms_mib": planned.as_dict()["breakdown_mib"],
                    }
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"process peak RSS {rss:.0f} MiB (all cases; includes the Python runtime and torch)")
    print("| model | adapter | checkpointing | tokens | measured MiB | planned MiB | error |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['model']} | {r['adapter']} | {r['checkpointing']} | {r['tokens']} | "
            f"{r['measured_mib']} | {r['planned_mib']} | {r['error_pct']:+}% |"
        )


if __name__ == "__main__":
    main()
