"""DPO vs SFT on the same preference pairs: step time and peak memory.

``examples/pirate_preferences.jsonl`` (52 pairs) trains SmolLM2-135M-Instruct (float32, DoRA
r=16, batch 8, one epoch = 7 steps) three ways, each in a fresh process so that peak memory is
its own:

* ``sft-chosen``: SFT on the preferred side of each pair (one row per pair);
* ``sft-both``: SFT on both sides (the same rows DPO computes, as two examples);
* ``dpo``: DPO on the pairs (two rows per pair with gradients, plus the reference forward
  with the adapter switched off).

Step time is the mean optimizer step (model loading and tokenisation excluded, the first step
kept out as warm-up); peak memory is the process's peak RSS on CPU, or
``torch.cuda.max_memory_allocated`` on a GPU. Targets: DPO/SFT step time <= 2.2x, peak
memory <= 1.3x (no second copy of the model)::

    .venv/bin/python bench/dpo_vs_sft.py            # ~5 minutes on 2 idle CPU cores
    .venv/bin/python bench/dpo_vs_sft.py --pairs 24 # 3 steps each (the first is warm-up)
    .venv/bin/python bench/dpo_vs_sft.py --device cuda --batch-size 16
    .venv/bin/python bench/dpo_vs_sft.py --pairs 24 --micro-batch-rows 8

By default every step is one micro-batch (rows capped at twice the pairs), so DPO holds the
activations of twice SFT-on-chosen's rows at once. ``--micro-batch-rows N`` caps every run's
micro-batches at N rows instead (the engine's default is 8), as a job's memory budget does: the
memory ratio then shows what DPO itself adds (the reference table, no second model).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import resource
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench_common import ROOT, TimingReporter, smollm2_dir

PAIRS = ROOT / "examples" / "pirate_preferences.jsonl"


@dataclass
class StepTimer(TimingReporter):
    """Times every optimizer step (the gap between two metrics calls)."""

    stamps: list[float] = field(default_factory=list)

    def metrics(self, step: int, total_steps: int, train_loss: float, *args, **kw) -> None:
        super().metrics(step, total_steps, train_loss)
        self.stamps.append(time.perf_counter())

    def step_seconds(self) -> float:
        """Mean step time, the first step (warm-up) left out."""
        assert self.started is not None
        times = [b - a for a, b in zip([self.started, *self.stamps], self.stamps, strict=False)]
        kept = times[1:] or times
        return sum(kept) / len(kept)


def _files(root: Path, n_pairs: int | None = None) -> dict[str, Path]:
    pairs = PAIRS.read_text(encoding="utf-8").splitlines()[:n_pairs]
    rows = [json.loads(line) for line in pairs]
    chosen = [{"messages": r["input"]["messages"] + r["preferred_output"]} for r in rows]
    rejected = [{"messages": r["input"]["messages"] + r["non_preferred_output"]} for r in rows]
    files = {
        "sft-chosen": chosen,
        "sft-both": chosen + rejected,
    }
    out = {name: root / f"{name}.jsonl" for name in files}
    for name, lines in files.items():
        out[name].write_text("".join(json.dumps(x) + "\n" for x in lines), encoding="utf-8")
    out["dpo"] = root / "dpo.jsonl"
    out["dpo"].write_text("".join(line + "\n" for line in pairs), encoding="utf-8")
    return out


def _run(kind: str, data: str, device: str, batch_size: int, micro_rows: int | None, queue) -> None:
    import torch

    from worker.training.options import EngineOptions
    from worker.training.recipe import train
    from worker.training.spec import AdapterSpec, DpoSpec, TrainSpec

    # sft-both has twice the examples: twice the batch keeps the same pairs in each step.
    batch = batch_size * (2 if kind == "sft-both" else 1)
    spec = TrainSpec(
        adapter=AdapterSpec(type="dora", r=16, alpha=32),
        n_epochs=1,
        batch_size=batch,
        learning_rate=1e-4,
        seed=0,
        options=EngineOptions(device=device, micro_batch_size=micro_rows or 2 * batch_size),
        dpo=DpoSpec(beta=0.1) if kind == "dpo" else None,
    )
    timer = StepTimer()
    with tempfile.TemporaryDirectory() as tmp:
        train(spec, smollm2_dir(), Path(data), Path(tmp) / "adapter", timer)
    if device.startswith("cuda"):
        peak_mb = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    queue.put((timer.step_seconds(), peak_mb, timer.steps))


def measure(
    kind: str, data: Path, device: str, batch_size: int, micro_rows: int | None = None
) -> tuple[float, float, int]:
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    args = (kind, str(data), device, batch_size, micro_rows, queue)
    process = ctx.Process(target=_run, args=args)
    process.start()
    result = queue.get()
    process.join()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=8, help="pairs per step")
    parser.add_argument(
        "--pairs", type=int, default=None, help="the file's first N pairs only (default: all)"
    )
    parser.add_argument(
        "--micro-batch-rows",
        type=int,
        default=None,
        help="cap every run's micro-batches at N rows (default: one micro-batch a step)",
    )
    args = parser.parse_args()
    smollm2_dir()  # build once, before the measured processes
    with tempfile.TemporaryDirectory() as tmp:
        files = _files(Path(tmp), args.pairs)
        results = {
            k: measure(k, files[k], args.device, args.batch_size, args.micro_batch_rows)
            for k in files
        }
    dpo_time, dpo_mem, _ = results["dpo"]
    print(f"{'run':<12} {'steps':>5} {'s/step':>8} {'peak MB':>9} {'DPO/this time':>14} {'mem':>6}")
    for name, (seconds, peak, steps) in results.items():
        print(
            f"{name:<12} {steps:>5} {seconds:>8.2f} {peak:>9.0f} "
            f"{dpo_time / seconds:>13.2f}x {dpo_mem / peak:>5.2f}x"
        )


if __name__ == "__main__":
    main()
