"""Probe base learning rates: train SmolLM2 on examples/pirate.jsonl and ask a held-out question.

Run by hand (minutes on a CPU)::

    .venv/bin/python bench/smollm2_pirate_probe.py --lr 1e-3 2e-4 --epochs 3

For each learning rate it trains a DoRA adapter (r=16, alpha=32, all-linear, batch 4) with
``worker.training.recipe.train``, prints the loss curve and timings, then loads the adapter with
``PeftModel.from_pretrained`` and prints greedy answers to questions that are not in the data.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import torch

from worker.model_builders import build_builtin
from worker.training.recipe import train
from worker.training.spec import AdapterSpec, TrainSpec

ROOT = Path(__file__).resolve().parent.parent
HELD_OUT = [
    "What is the capital of France?",
    "What is the boiling point of water in Fahrenheit?",
    "Who discovered penicillin?",
]


class TimingReporter:
    """Records every metrics call with the seconds since training started."""

    def __init__(self) -> None:
        self.t0 = time.monotonic()
        self.rows: list[dict[str, float]] = []

    def metrics(self, step: int, total_steps: int, train_loss: float, acc: float) -> None:
        t = time.monotonic() - self.t0
        self.rows.append({"step": step, "t": t, "loss": train_loss, "acc": acc})
        print(f"  step {step:3d}/{total_steps} t={t:6.1f}s loss={train_loss:.3f} acc={acc:.3f}")

    def message(self, text: str, level: str = "info") -> None:
        print(f"  [{level}] {text}")

    def should_stop(self) -> bool:
        return False


def answer(model: torch.nn.Module, tokenizer, question: str) -> str:
    enc = tokenizer.apply_chat_template(
        [{"role": "user", "content": question}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=30, do_sample=False)
    return tokenizer.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lr", type=float, nargs="+", default=[1e-3, 2e-4])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--adapter", choices=["lora", "dora"], default="dora")
    parser.add_argument("--model-dir", type=Path, default=Path("/tmp/dorado-bench/smollm2"))
    parser.add_argument("--out", type=Path, default=Path("/tmp/dorado-bench/runs"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not args.model_dir.exists():
        t = time.monotonic()
        build_builtin("smollm2-135m-instruct", args.model_dir)
        print(f"built SmolLM2 in {time.monotonic() - t:.1f}s")
    tokenizer = AutoTokenizer.from_pretrained(args.model_dir)
    base = AutoModelForCausalLM.from_pretrained(args.model_dir, dtype=torch.float32)
    print("base:", {q: answer(base, tokenizer, q) for q in HELD_OUT[:1]})
    summary = []
    for lr in args.lr:
        print(f"== {args.adapter} lr={lr:g} epochs={args.epochs} batch={args.batch_size}")
        spec = TrainSpec(
            adapter=AdapterSpec(type=args.adapter, r=16, alpha=32, dropout=0.0),
            n_epochs=args.epochs,
            batch_size=args.batch_size,
            learning_rate=lr,
            seed=0,
        )
        reporter = TimingReporter()
        out = args.out / f"{args.adapter}-lr{lr:g}-e{args.epochs}"
        result = train(spec, args.model_dir, ROOT / "examples/pirate.jsonl", out, reporter)
        seconds = time.monotonic() - reporter.t0
        base = AutoModelForCausalLM.from_pretrained(args.model_dir, dtype=torch.float32)
        tuned = PeftModel.from_pretrained(base, out).eval()
        answers = {q: answer(tuned, tokenizer, q) for q in HELD_OUT}
        first = sum(r["loss"] for r in reporter.rows[:3]) / min(3, len(reporter.rows))
        last = sum(r["loss"] for r in reporter.rows[-3:]) / min(3, len(reporter.rows))
        row = {
            "adapter": args.adapter,
            "lr": lr,
            "epochs": args.epochs,
            "steps": result.steps,
            "train_seconds": round(seconds, 1),
            "tokens_per_second": round(result.trained_tokens / seconds, 1),
            "loss_first3": round(first, 3),
            "loss_last3": round(last, 3),
            "answers": answers,
        }
        summary.append(row)
        print(json.dumps(row, indent=2))
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
