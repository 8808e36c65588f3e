"""Training throughput: the worker's engine vs a plain HF Trainer + PEFT baseline.

Same model (SmolLM2-135M-Instruct, float32, CPU), same data (a generated chat set with skewed
lengths, see ``skewed_chat.py``), same hyperparameters (batch 8, lr 1e-3 linear decay, no
warmup, clip 1.0, r=16 alpha=32 all-linear) and token budget (one pass over the same examples),
for LoRA and DoRA, side by side in one invocation::

    .venv/bin/python bench/train_throughput.py            # ~10 minutes on 2 CPU cores
    .venv/bin/python bench/train_throughput.py --examples 32 --methods lora

Prints, for each run, real (non-padding) and padded tokens/s over the training steps only, the
padding fraction, the last step's training loss and the loss/accuracy on 16 held-out examples,
then our/baseline ratios.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from bench_common import TimingReporter, heldout_metrics, smollm2_dir
from skewed_chat import make_examples, write_jsonl

from worker.training.adapters import attach_adapter
from worker.training.data import load_dataset
from worker.training.recipe import train
from worker.training.spec import AdapterSpec, TrainSpec

LR = 1e-3
BATCH = 8


def run_ours(method, model_dir, train_file, valid_examples, pad_id, out: Path, seed: int) -> dict:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    spec = TrainSpec(
        adapter=AdapterSpec(type=method, r=16, alpha=32),
        n_epochs=1,
        batch_size=BATCH,
        learning_rate=LR,
        seed=seed,
        extra={"device": "cpu"},
    )
    reporter = TimingReporter()
    result = train(spec, model_dir, train_file, out, reporter)
    # Padded tokens: what the engine computed, re-derived from its own batching.
    tuned = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_dir), out)
    loss, acc = heldout_metrics(tuned, valid_examples, pad_id)
    return {
        "seconds": reporter.seconds,
        "real": result.trained_tokens,
        "padded": _our_padded_tokens(model_dir, train_file, seed),
        "last_loss": reporter.losses[-1],
        "heldout_loss": loss,
        "heldout_acc": acc,
    }


def _our_padded_tokens(model_dir, train_file, seed: int) -> int:
    from transformers import AutoTokenizer

    from worker.training.data import plan_epoch, step_micro_batches

    tok = AutoTokenizer.from_pretrained(model_dir)
    examples = load_dataset(train_file, tok, 2048).examples
    lengths = [len(e) for e in examples]
    return sum(
        mb.n_padded_tokens
        for batch in plan_epoch(lengths, BATCH, seed, 0)
        for mb in step_micro_batches(examples, batch, lengths, 0)
    )


def run_baseline(method, model_dir, train_examples, valid_examples, pad_id, seed: int) -> dict:
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        DataCollatorForSeq2Seq,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    tok = AutoTokenizer.from_pretrained(model_dir)
    torch.manual_seed(seed)
    model = attach_adapter(
        AutoModelForCausalLM.from_pretrained(model_dir), AdapterSpec(type=method, r=16, alpha=32)
    )
    rows = [{"input_ids": list(e.input_ids), "labels": list(e.labels)} for e in train_examples]
    pad_collate = DataCollatorForSeq2Seq(tok, padding=True, label_pad_token_id=-100)
    counts = {"real": 0, "padded": 0}

    def collate(features):
        batch = pad_collate(features)
        counts["real"] += int(batch["attention_mask"].sum())
        counts["padded"] += int(batch["input_ids"].numel())
        return batch

    times: dict[str, float] = {}
    losses: list[float] = []

    class Clock(TrainerCallback):
        def on_train_begin(self, *a, **k):
            times["start"] = time.perf_counter()

        def on_step_end(self, *a, **k):
            times["end"] = time.perf_counter()

        def on_log(self, args, state, control, logs=None, **k):
            if logs and "loss" in logs:
                losses.append(float(logs["loss"]))

    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(
            output_dir=tmp,
            per_device_train_batch_size=BATCH,
            num_train_epochs=1,
            learning_rate=LR,
            lr_scheduler_type="linear",
            warmup_steps=0,
            weight_decay=0.0,
            max_grad_norm=1.0,
            logging_steps=1,
            save_strategy="no",
            report_to="none",
            use_cpu=True,
            seed=seed,
            remove_unused_columns=False,
            dataloader_num_workers=0,
        )
        Trainer(
            model=model, args=args, train_dataset=rows, data_collator=collate, callbacks=[Clock()]
        ).train()
    loss, acc = heldout_metrics(model, valid_examples, pad_id)
    return {
        "seconds": times["end"] - times["start"],
        "real": counts["real"],
        "padded": counts["padded"],
        "last_loss": losses[-1],
        "heldout_loss": loss,
        "heldout_acc": acc,
    }


def show(name: str, r: dict) -> None:
    print(
        f"{name:16s} {r['real'] / r['seconds']:8.1f} real tok/s {r['padded'] / r['seconds']:8.1f}"
        f" padded tok/s  padding {1 - r['real'] / r['padded']:5.1%}  {r['seconds']:6.1f} s"
        f"  last loss {r['last_loss']:.4f}  held-out loss {r['heldout_loss']:.4f}"
        f" acc {r['heldout_acc']:.3f}",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=64)
    parser.add_argument("--methods", nargs="+", default=["lora", "dora"])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    from transformers import AutoTokenizer

    model_dir = smollm2_dir()
    tok = AutoTokenizer.from_pretrained(model_dir)
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        train_file = write_jsonl(root / "train.jsonl", make_examples(args.examples, seed=1))
        valid_file = write_jsonl(root / "valid.jsonl", make_examples(16, seed=2))
        train_examples = load_dataset(train_file, tok, 2048).examples
        valid_examples = load_dataset(valid_file, tok, 2048).examples
        lengths = sorted(len(e) for e in train_examples)
        print(
            f"{len(lengths)} examples, {lengths[0]}..{lengths[-1]} tokens "
            f"(median {lengths[len(lengths) // 2]}), batch {BATCH}, 1 epoch, "
            f"{torch.get_num_threads()} threads",
            flush=True,
        )
        # An untimed one-step run first: the first steps of a process pay for allocator growth
        # and kernel selection, which would otherwise land on whichever run comes first.
        warm = write_jsonl(root / "warm.jsonl", make_examples(BATCH, seed=3))
        run_ours("lora", model_dir, warm, valid_examples[:2], pad_id, root / "warm", args.seed)
        for method in args.methods:
            ours = run_ours(
                method, model_dir, train_file, valid_examples, pad_id, root / method, args.seed
            )
            show(f"ours {method}", ours)
            base = run_baseline(
                method, model_dir, train_examples, valid_examples, pad_id, args.seed
            )
            show(f"trainer {method}", base)
            ratio = (ours["real"] / ours["seconds"]) / (base["real"] / base["seconds"])
            vs_padded = (ours["real"] / ours["seconds"]) / (base["padded"] / base["seconds"])
            print(
                f"{method}: real tok/s ours/trainer {ratio:.2f}x; ours real vs trainer padded "
                f"tok/s {vs_padded:.2f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
