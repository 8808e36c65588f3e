"""LoRA vs DoRA at the same rank and at half rank, on a held-out split of a small real task.

The task is ``examples/pirate.jsonl`` (answer questions in a pirate's voice; 52 examples). A
seeded split keeps 12 examples out of training; the engine trains on the other 40 (SmolLM2-
135M-Instruct, float32, CPU, batch 8, 3 epochs, lr 1e-3 linear decay, alpha = 2r, all-linear)
and reports the loss and next-token accuracy on the held-out 12 (the ``full_valid_*`` metrics
of the last epoch, assistant tokens only)::

    .venv/bin/python bench/lora_vs_dora.py                    # ~5 minutes on 2 CPU cores
    .venv/bin/python bench/lora_vs_dora.py --rank 8 --epochs 2
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench_common import ROOT, TimingReporter, smollm2_dir

from worker.training.options import EngineOptions
from worker.training.recipe import train
from worker.training.spec import AdapterSpec, TrainSpec


@dataclass
class ValidReporter(TimingReporter):
    """Keeps the last full validation metrics."""

    full_valid: list[tuple[float, float]] = field(default_factory=list)

    def metrics(self, step, total_steps, train_loss, train_mean_token_accuracy, **kw) -> None:
        super().metrics(step, total_steps, train_loss)
        if kw.get("full_valid_loss") is not None:
            self.full_valid.append((kw["full_valid_loss"], kw["full_valid_mean_token_accuracy"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    lines = (ROOT / "examples" / "pirate.jsonl").read_text(encoding="utf-8").splitlines()
    random.Random(args.seed).shuffle(lines)
    held_out, training = lines[:12], lines[12:]
    model_dir = smollm2_dir()
    half = max(1, args.rank // 2)
    configs = [("lora", args.rank), ("dora", args.rank), ("lora", half), ("dora", half)]
    print(
        f"pirate.jsonl: {len(training)} train / {len(held_out)} held-out, "
        f"{args.epochs} epochs, batch 8, lr 1e-3",
        flush=True,
    )
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        train_file = root / "train.jsonl"
        valid_file = root / "valid.jsonl"
        train_file.write_text("\n".join(training) + "\n", encoding="utf-8")
        valid_file.write_text("\n".join(held_out) + "\n", encoding="utf-8")
        rows = []
        for method, r in configs:
            spec = TrainSpec(
                adapter=AdapterSpec(type=method, r=r, alpha=2 * r),
                n_epochs=args.epochs,
                batch_size=8,
                learning_rate=1e-3,
                seed=args.seed,
                eval_every_n_steps=10**6,  # only the full held-out evaluation at epoch ends
                options=EngineOptions(device="cpu"),
            )
            reporter = ValidReporter()
            began = time.perf_counter()
            train(
                spec,
                model_dir,
                train_file,
                root / f"{method}{r}",
                reporter,
                validation_file=valid_file,
            )
            seconds = time.perf_counter() - began
            before = reporter.full_valid[0]
            loss, acc = reporter.full_valid[-1]
            rows.append((method, r, loss, acc))
            print(
                f"{method} r={r:<3d} held-out loss {loss:.4f} acc {acc:.3f} "
                f"(after epoch 1: {before[0]:.4f} / {before[1]:.3f}); "
                f"last train loss {reporter.losses[-1]:.4f}; {seconds:.0f} s",
                flush=True,
            )
    print("\n| adapter | rank | held-out loss | held-out token accuracy |")
    print("|---|---|---|---|")
    for method, r, loss, acc in rows:
        print(f"| {method} | {r} | {loss:.4f} | {acc:.3f} |")


if __name__ == "__main__":
    main()
