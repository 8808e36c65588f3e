"""FSDP2 vs DDP on two gloo ranks: step time and each rank's peak memory, tiny Llama.

The same DoRA job (the tests' tiny random Llama, the first 24 pirate examples, batch 8) is
trained through the worker's multi-process path (``worker.training.distributed``) once with
``sharding="ddp"`` (every rank holds the whole model, hand-written gradient all-reduce) and
once with ``sharding="fsdp"`` (FSDP2 per decoder layer). One command::

    PYTHONPATH=$PWD .venv/bin/python bench/fsdp_vs_ddp.py   # a few minutes on 2 CPU cores

Prints, per mode: the median seconds per optimizer step (from the control check before a step
to its metrics report, as rank 0 sees them; model loading excluded), each rank's peak resident
memory (``VmHWM``, read from ``/proc`` by the launcher while the ranks train) and the final
loss (the two must agree). On a model this small the peak is mostly the
Python and torch runtime; the point of FSDP is the per-rank share of weights on big models,
which ``bench/gpu_check.py`` measures on GPUs.
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from bench_common import ROOT, TimingReporter

from worker.model_builders import build_builtin
from worker.training.distributed import train_data_parallel
from worker.training.options import EngineOptions
from worker.training.spec import AdapterSpec, TrainSpec


@dataclass
class MemoryReporter(TimingReporter):
    """Times each step and records each rank's peak RSS at every control check."""

    peaks_kib: dict[str, int] = field(default_factory=dict)
    step_seconds: list[float] = field(default_factory=list)
    checked: float = 0.0

    def should_stop(self) -> bool:
        for child in multiprocessing.active_children():
            if child.name.startswith("dorado-rank-"):
                peak = _vm_hwm_kib(child.pid)
                self.peaks_kib[child.name] = max(peak, self.peaks_kib.get(child.name, 0))
        self.checked = time.perf_counter()
        return super().should_stop()

    def metrics(self, step: int, total_steps: int, train_loss: float, *args, **kw) -> None:
        self.step_seconds.append(time.perf_counter() - self.checked)
        super().metrics(step, total_steps, train_loss, *args, **kw)

    def message(self, text: str, level: str = "info") -> None:
        pass


def _vm_hwm_kib(pid: int | None) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=24)
    parser.add_argument("--ranks", type=int, default=2)
    args = parser.parse_args(argv)
    spec = TrainSpec(
        adapter=AdapterSpec(type="dora", r=8, alpha=16),
        n_epochs=1,
        batch_size=8,
        learning_rate=1e-3,
        seed=1,
        log_every_n_steps=1,  # a report after every step: its time
        options=EngineOptions(device="cpu", precision="fp32"),
    )
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model_dir = work / "tiny"
        build_builtin("tiny-random-llama", model_dir)
        lines = (ROOT / "examples" / "pirate.jsonl").read_text(encoding="utf-8").splitlines()
        data = work / "train.jsonl"
        data.write_text("\n".join(lines[: args.examples]) + "\n", encoding="utf-8")
        print(f"{'mode':<5} {'median s/step':>14} {'peak RSS MiB per rank':>24} {'final loss':>11}")
        for mode in ("ddp", "fsdp"):
            reporter = MemoryReporter()
            run = replace(spec, options=replace(spec.options, sharding=mode))
            result = train_data_parallel(
                args.ranks, run, model_dir, data, work / mode, reporter, backend="gloo"
            )
            peaks = " / ".join(
                f"{reporter.peaks_kib[k] / 1024:.0f}" for k in sorted(reporter.peaks_kib)
            )
            per_step = statistics.median(reporter.step_seconds)
            print(f"{mode:<5} {per_step:>14.3f} {peaks:>24} {result.final_train_loss:>11.5f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
