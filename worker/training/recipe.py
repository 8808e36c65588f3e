"""The training recipe: setup -> train -> save -> cleanup, driven by a frozen :class:`TrainSpec`.

One call to :func:`train` fine-tunes a LoRA/DoRA adapter on a chat JSONL file with loss on
assistant tokens only, reports metrics through a :class:`Reporter`, and writes the adapter in
PEFT's layout (``adapter_config.json`` + ``adapter_model.safetensors``).

Optional knobs read from ``TrainSpec.extra`` (all have defaults):

* ``lr_scheduler``: "linear" (default), "cosine" or "constant", after linear warmup.
* ``micro_batch_size`` (8) and ``micro_batch_tokens`` (8192): gradient-accumulation split of
  each optimizer batch; they change memory use, not the maths.
* ``device``: "cpu" or "cuda" to override the automatic choice.
* ``base_model_name``: written as ``base_model_name_or_path`` in ``adapter_config.json``
  instead of the local directory the base model was loaded from.
* ``job_id``: put on every log line.
"""

from __future__ import annotations

import gc
import logging
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from worker.training.adapters import attach_adapter
from worker.training.data import (
    IGNORE_INDEX,
    Batch,
    TokenizedDataset,
    iter_steps,
    load_dataset,
    n_batches_per_epoch,
)
from worker.training.spec import Reporter, TrainingStopped, TrainResult, TrainSpec

if TYPE_CHECKING:
    from peft import PeftModel
    from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

DEFAULT_MAX_SEQ_LENGTH = 2048
LR_SCHEDULERS = ("linear", "cosine", "constant")


@dataclass(frozen=True)
class StepStats:
    """Totals of one optimizer step."""

    loss: float
    accuracy: float
    n_tokens: int
    n_loss_tokens: int


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's (if installed) and torch's RNGs (all devices)."""
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy as np
    except ImportError:  # numpy is optional for the engine
        return
    np.random.seed(seed % 2**32)


def select_device(preferred: str | None = None) -> tuple[torch.device, torch.dtype]:
    """Return the device and base-model dtype: bf16 on a CUDA GPU that supports it, else fp32."""
    name = preferred or ("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return device, torch.bfloat16
    return device, torch.float32


def resolve_max_seq_length(spec: TrainSpec, config: PretrainedConfig) -> int:
    """``spec.max_seq_length``, or min(model's ``max_position_embeddings``, 2048)."""
    if spec.max_seq_length is not None:
        if spec.max_seq_length < 2:
            raise ValueError("max_seq_length must be >= 2")
        return spec.max_seq_length
    limit = getattr(config, "max_position_embeddings", None) or DEFAULT_MAX_SEQ_LENGTH
    return min(int(limit), DEFAULT_MAX_SEQ_LENGTH)


def lr_factor(step: int, total_steps: int, warmup_steps: int, kind: str = "linear") -> float:
    """Multiplier of the base learning rate for 0-based optimizer ``step``.

    Linear warmup from ~0 over ``warmup_steps``, then linear or cosine decay towards 0 at
    ``total_steps`` (or constant).
    """
    if kind not in LR_SCHEDULERS:
        raise ValueError(f"lr_scheduler must be one of {LR_SCHEDULERS}, got {kind!r}")
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    if kind == "constant":
        return 1.0
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    if kind == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return max(0.0, 1.0 - progress)


def build_optimizer(model: torch.nn.Module, spec: TrainSpec) -> torch.optim.AdamW:
    """AdamW over the trainable parameters only.

    Weight decay applies to matrices (LoRA A/B) but not to vectors: decaying DoRA's
    ``lora_magnitude_vector`` pulls it towards 0, which shrinks the whole adapted weight
    instead of regularising the update.
    """
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for param in model.parameters():
        if param.requires_grad:
            (decay if param.ndim >= 2 else no_decay).append(param)
    groups = [{"params": decay, "weight_decay": spec.weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return torch.optim.AdamW(groups, lr=spec.learning_rate)


def _extra_str(spec: TrainSpec, key: str) -> str | None:
    value = spec.extra.get(key)
    return None if value is None else str(value)


def _validate(spec: TrainSpec) -> None:
    if spec.n_epochs < 1:
        raise ValueError("n_epochs must be >= 1")
    if spec.batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    if not spec.learning_rate > 0:
        raise ValueError("learning_rate must be > 0")
    if not 0.0 <= spec.warmup_ratio < 1.0:
        raise ValueError("warmup_ratio must be in [0, 1)")
    if spec.log_every_n_steps < 1:
        raise ValueError("log_every_n_steps must be >= 1")


def _load_model(
    base_model_dir: Path, device: torch.device, dtype: torch.dtype
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_model_dir)
    model = AutoModelForCausalLM.from_pretrained(base_model_dir, dtype=dtype)
    model.to(device)
    return model, tokenizer


def _pad_token_id(tokenizer: PreTrainedTokenizerBase) -> int:
    # Padding is masked out of attention and labels, so any valid id works when none is set.
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return int(candidate)
    return 0


def _report_dataset(dataset: TokenizedDataset, reporter: Reporter) -> None:
    if dataset.n_truncated:
        reporter.message(
            f"Truncated {dataset.n_truncated} examples longer than {dataset.max_seq_length} tokens",
            "warn",
        )
    if dataset.n_dropped_no_loss:
        reporter.message(
            f"Skipped {dataset.n_dropped_no_loss} examples with no trained assistant tokens "
            "(all weights 0, or cut off by max_seq_length)",
            "warn",
        )
    if not dataset.examples:
        raise ValueError("the training file has no example with trainable assistant tokens")


def forward_backward(
    model: torch.nn.Module,
    micro_batches: Sequence[Batch],
    device: torch.device,
) -> StepStats:
    """Forward/backward over the micro-batches of one optimizer step; gradients accumulate.

    Each micro-batch's summed token loss is divided by the whole step's count of loss tokens, so
    the accumulated gradient is that of the token-weighted mean over the step, however the step
    was split.
    """
    # Labels are shifted by one against the logits; the count must be of the shifted labels.
    step_loss_tokens = sum(int((mb.labels[:, 1:] != IGNORE_INDEX).sum()) for mb in micro_batches)
    denom = max(step_loss_tokens, 1)
    loss_sum = 0.0
    correct = 0
    for mb in micro_batches:
        input_ids = mb.input_ids.to(device)
        attention_mask = mb.attention_mask.to(device)
        targets = mb.labels[:, 1:].to(device)
        out = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        # fp32 logits: a bf16 softmax over a large vocabulary loses the precision the loss needs.
        logits = out.logits[:, :-1].float()
        loss = F.cross_entropy(
            logits.reshape(-1, logits.size(-1)),
            targets.reshape(-1),
            ignore_index=IGNORE_INDEX,
            reduction="sum",
        )
        (loss / denom).backward()
        with torch.no_grad():
            mask = targets != IGNORE_INDEX
            correct += int((logits.argmax(dim=-1)[mask] == targets[mask]).sum())
            loss_sum += float(loss)
        del out, logits, loss
    return StepStats(
        loss=loss_sum / denom,
        accuracy=correct / denom,
        n_tokens=sum(mb.n_tokens for mb in micro_batches),
        n_loss_tokens=step_loss_tokens,
    )


def _save_adapter(model: PeftModel, output_dir: Path, base_model_name: str | None) -> None:
    output_dir.mkdir(parents=True, exist_ok=True)
    for cfg in model.peft_config.values():
        if base_model_name:
            cfg.base_model_name_or_path = base_model_name
        # PEFT stores resolved "all-linear" targets as a set; sorted, the saved config is
        # byte-for-byte reproducible.
        if isinstance(cfg.target_modules, set):
            cfg.target_modules = sorted(cfg.target_modules)
    model.save_pretrained(output_dir)
    # PEFT also writes a boilerplate model card; the adapter directory is meant to hold exactly
    # the two files that loaders read.
    card = output_dir / "README.md"
    if card.exists():
        card.unlink()


def train(
    spec: TrainSpec,
    base_model_dir: Path,
    training_file: Path,
    output_dir: Path,
    reporter: Reporter,
) -> TrainResult:
    """Train an adapter described by ``spec`` and save it to ``output_dir``.

    Args:
        spec: resolved hyperparameters; ``learning_rate`` is the final rate (the caller applies
            any multiplier).
        base_model_dir: a local Hugging Face model directory (config, safetensors, tokenizer
            with a chat template), e.g. one written by ``worker.model_builders``.
        training_file: a local chat JSONL file (see ``worker.training.data``).
        output_dir: created if missing; receives ``adapter_config.json`` and
            ``adapter_model.safetensors`` only on success.
        reporter: receives ``metrics`` after every ``log_every_n_steps``-th optimizer step and
            the last one (1-based ``step``; loss and accuracy of that step), ``message`` for
            notable events, and is asked ``should_stop`` before every optimizer step.

    Returns:
        The adapter directory, optimizer steps run, ``trained_tokens`` (every real,
        non-padding input token of every example in every epoch, prompt included, as OpenAI
        bills; not only the loss tokens) and the last step's loss.

    Raises:
        TrainingStopped: ``reporter.should_stop()`` returned True; nothing is saved.
        DatasetFormatError: a line of ``training_file`` is not a chat example.
        ValueError: invalid hyperparameters, or no example has a trainable token.
        FloatingPointError: the loss became NaN or infinite (learning rate too high).
    """
    _validate(spec)
    lr_factor(0, 1, 0, _extra_str(spec, "lr_scheduler") or "linear")  # fail fast on a bad name
    device, dtype = select_device(_extra_str(spec, "device"))
    try:
        paths = (Path(base_model_dir), Path(training_file), Path(output_dir))
        return _run(spec, *paths, reporter, device, dtype)
    finally:
        # A worker process trains many jobs: release this one's memory promptly (best effort;
        # an exception's traceback keeps the frames alive until it is handled).
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()


def _run(
    spec: TrainSpec,
    base_model_dir: Path,
    training_file: Path,
    output_dir: Path,
    reporter: Reporter,
    device: torch.device,
    dtype: torch.dtype,
) -> TrainResult:
    extra = spec.extra
    job = extra.get("job_id", "-")

    # setup
    base, tokenizer = _load_model(base_model_dir, device, dtype)
    max_len = resolve_max_seq_length(spec, base.config)
    dataset = load_dataset(training_file, tokenizer, max_len)
    _report_dataset(dataset, reporter)
    seed_everything(spec.seed)  # the adapter's random init must not depend on setup
    model = attach_adapter(base, spec.adapter)
    model.train()
    optimizer = build_optimizer(model, spec)
    steps_per_epoch = n_batches_per_epoch(len(dataset.examples), spec.batch_size)
    total_steps = spec.n_epochs * steps_per_epoch
    warmup_steps = math.ceil(spec.warmup_ratio * total_steps)
    kind = _extra_str(spec, "lr_scheduler") or "linear"
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, total_steps, warmup_steps, kind)
    )
    trainable = [p for p in model.parameters() if p.requires_grad]
    pad_id = _pad_token_id(tokenizer)
    micro_size = int(str(extra.get("micro_batch_size", 8)))
    micro_tokens = int(str(extra.get("micro_batch_tokens", 8192)))
    reporter.message(
        f"Training a {spec.adapter.type} adapter (r={spec.adapter.r}) on "
        f"{len(dataset.examples)} examples: {total_steps} steps "
        f"({spec.n_epochs} epochs x {steps_per_epoch}) on {device.type}"
    )
    logger.info("[job %s] %d steps on %s (%s)", job, total_steps, device, dtype)

    # train
    step = 0
    trained_tokens = 0
    last_loss: float | None = None
    for epoch in range(spec.n_epochs):
        steps = iter_steps(
            dataset.examples, spec.batch_size, spec.seed, epoch, pad_id, micro_size, micro_tokens
        )
        for micro_batches in steps:
            if reporter.should_stop():
                logger.info("[job %s] stop requested before step %d", job, step + 1)
                raise TrainingStopped(f"stopped before step {step + 1} of {total_steps}")
            optimizer.zero_grad(set_to_none=True)
            stats = forward_backward(model, micro_batches, device)
            if not math.isfinite(stats.loss):
                raise FloatingPointError(
                    f"training loss became {stats.loss} at step {step + 1}; "
                    "try a lower learning rate"
                )
            if spec.max_grad_norm and spec.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(trainable, spec.max_grad_norm)
            optimizer.step()
            scheduler.step()
            step += 1
            trained_tokens += stats.n_tokens
            last_loss = stats.loss
            if step % spec.log_every_n_steps == 0 or step == total_steps:
                reporter.metrics(step, total_steps, stats.loss, stats.accuracy)
            logger.debug(
                "[job %s] step %d/%d loss %.4f acc %.3f tokens %d",
                job,
                step,
                total_steps,
                stats.loss,
                stats.accuracy,
                stats.n_tokens,
            )

    # save
    _save_adapter(model, output_dir, _extra_str(spec, "base_model_name"))
    logger.info("[job %s] saved adapter to %s after %d steps", job, output_dir, step)
    return TrainResult(
        adapter_dir=output_dir,
        steps=step,
        trained_tokens=trained_tokens,
        final_train_loss=last_loss,
    )
