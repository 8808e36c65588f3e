"""The training recipe: setup -> train -> save -> cleanup, driven by a frozen :class:`TrainSpec`.

One call to :func:`train` fine-tunes a LoRA/DoRA adapter on a chat JSONL file with loss on
assistant tokens only, reports metrics through a :class:`Reporter`, and writes the adapter in
PEFT's layout (``adapter_config.json`` + ``adapter_model.safetensors``).

The engine's optional knobs (learning-rate schedule, length grouping, micro-batching, the fast
DoRA/fused adapter/output-head paths, device, labels) are the typed, validated fields of
``TrainSpec.options`` (:class:`worker.training.options.EngineOptions`), each documented there
with its default. ``TrainSpec.learning_rate`` is the final rate: the engine applies no override.

Checkpoints (adapter + optimizer + scheduler + RNG + data position, see
``worker.training.checkpoints``) are written at every epoch end, every
``checkpoint_every_n_steps`` steps if set, and on pause; each is handed to
``Reporter.save_checkpoint`` and deleted afterwards. ``resume_from`` continues such a run at the
next step with the same data order, ending with the same adapter as an uninterrupted run.

Under ``torch.distributed`` (see ``worker.training.distributed``) every rank runs this same code
on its share of each batch (``worker.training.parallel``); rank 0 reports and saves. With
``options.sharding == "fsdp"`` the model is sharded across the ranks (``worker.training.fsdp``).
"""

from __future__ import annotations

import gc
import logging
import math
import os
import random
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
import torch.nn.functional as F

from worker.training.adapters import attach_adapter, load_adapter_weights
from worker.training.checkpoints import (
    CheckpointMismatch,
    TrainingState,
    load_checkpoint_adapter,
    load_training_checkpoint,
    read_training_state,
    save_training_checkpoint,
)
from worker.training.data import (
    IGNORE_INDEX,
    Batch,
    TokenizedDataset,
    TokenizedExample,
    collate,
    load_dataset,
    n_batches_per_epoch,
    plan_epoch,
    split_micro_batches,
    step_micro_batches,
)
from worker.training.logits import split_head, target_logits
from worker.training.options import FSDP_INT8, GROUP_SIZE_MULTIPLIER, LR_SCHEDULERS
from worker.training.parallel import DataParallel
from worker.training.precision import grad_scaler, resolve_dtype
from worker.training.spec import (
    METRIC_KEYS,
    CheckpointInfo,
    CheckpointReason,
    Reporter,
    TrainingPaused,
    TrainingStopped,
    TrainResult,
    TrainSpec,
)

if TYPE_CHECKING:
    from peft import PeftModel
    from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

    from worker.training.dpo import PreferencePair

logger = logging.getLogger(__name__)

DEFAULT_MAX_SEQ_LENGTH = 2048
EVALS_PER_RUN = 10
"""With ``eval_every_n_steps=None``, the sampled validation runs about this often per run."""
REFERENCE_FILE = "dpo_reference.pt"
"""A DPO checkpoint's reference log-probs: ``{"train": [n, 2], "valid": [m, 2] or None}``."""


@dataclass(frozen=True)
class StepStats:
    """Totals of one optimizer step (of this rank's share of it, under data parallelism)."""

    loss: float
    accuracy: float
    n_tokens: int
    n_loss_tokens: int
    extra: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class EvalStats:
    """Token-weighted loss and accuracy over a validation set (for DPO: the mean pair loss,
    the preference accuracy, and the DPO quantities in ``extra``, keyed without prefix)."""

    loss: float
    accuracy: float
    n_loss_tokens: int
    extra: Mapping[str, float] = field(default_factory=dict)


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's (if installed) and torch's RNGs (all devices)."""
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy as np
    except ImportError:  # numpy is optional for the engine
        return
    np.random.seed(seed % 2**32)


def select_device(
    preferred: str | None = None, parallel: DataParallel | None = None
) -> tuple[torch.device, torch.dtype]:
    """Return the device and base-model dtype: bf16 on a CUDA GPU that supports it, else fp32.

    Under data parallelism on CUDA each rank takes GPU ``LOCAL_RANK`` (its place among its
    host's ranks, set by the launcher; else its rank) modulo the host's device count.
    """
    name = preferred or ("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and device.index is None and parallel and parallel.world_size > 1:
        local = int(os.environ.get("LOCAL_RANK", parallel.rank))
        device = torch.device("cuda", local % torch.cuda.device_count())
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


def adapted(base: PreTrainedModel, spec: TrainSpec) -> PeftModel:
    """``base`` with ``spec``'s fresh adapter attached (its random init seeded from
    ``spec.seed``) and gradient checkpointing on when ``spec`` asks for it."""
    if spec.gradient_checkpointing:
        # Non-reentrant checkpointing needs no input that requires grad (frozen embeddings).
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    seed_everything(spec.seed)  # the adapter's random init must not depend on setup
    return attach_adapter(base, spec.adapter)


def enable_fast_forwards(model: PeftModel, spec: TrainSpec) -> PeftModel:
    """``model`` with the engine's faster LoRA/DoRA forwards switched on (as ``spec.options``
    configures them)."""
    if spec.adapter.type == "dora" and spec.options.fast_dora:
        from worker.training.fast_dora import enable_fast_dora

        enable_fast_dora(model)
    if spec.options.fused_adapters:
        from worker.training.fused_adapter import enable_fused_adapters

        enable_fused_adapters(model)
    return model


def eval_interval(spec: TrainSpec, total_steps: int) -> int:
    """Steps between sampled validations: ``spec.eval_every_n_steps`` or ~10 per run."""
    if spec.eval_every_n_steps is not None:
        return spec.eval_every_n_steps
    return max(1, total_steps // EVALS_PER_RUN)


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
    for name in ("checkpoint_every_n_steps", "eval_every_n_steps"):
        value = getattr(spec, name)
        if value is not None and value < 1:
            raise ValueError(f"{name} must be >= 1")
    if spec.options.sharding == "fsdp" and spec.adapter.quantization == "int8":
        raise ValueError(FSDP_INT8)


def _load_model(
    base_model_dir: Path, device: torch.device, dtype: torch.dtype, quantization: str | None = None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The base model in ``dtype`` on ``device``, its linear layers quantized by
    ``quantization`` ("nf4" or "int8", computing in ``dtype``) when set, and its tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_model_dir)
    if quantization is not None:
        from worker.training.quantization import load_quantized

        return load_quantized(base_model_dir, quantization, dtype, device), tokenizer
    model = AutoModelForCausalLM.from_pretrained(base_model_dir, dtype=dtype)
    model.to(device)  # type: ignore[arg-type]  # transformers' typed wrapper of Module.to is wrong
    return model, tokenizer


def _pad_token_id(tokenizer: PreTrainedTokenizerBase) -> int:
    # Padding is masked out of attention and labels, so any valid id works when none is set.
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return int(candidate)
    return 0


def _report_dataset(dataset: TokenizedDataset, reporter: Reporter, what: str = "") -> None:
    if dataset.n_truncated:
        reporter.message(
            f"Truncated {dataset.n_truncated} {what}examples longer than "
            f"{dataset.max_seq_length} tokens",
            "warn",
        )
    if dataset.n_dropped_no_loss:
        reporter.message(
            f"Skipped {dataset.n_dropped_no_loss} {what}examples with no trained assistant "
            "tokens (all weights 0, or cut off by max_seq_length)",
            "warn",
        )


def forward_backward(
    model: torch.nn.Module,
    micro_batches: Sequence[Batch],
    device: torch.device,
    loss_tokens: int | None = None,
    loss_positions_only: bool = True,
    scale: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> StepStats:
    """Forward/backward over the micro-batches of one optimizer step; gradients accumulate.

    Each micro-batch's summed token loss is divided by the whole step's count of loss tokens
    (``loss_tokens``, which under data parallelism counts every rank's share; by default the
    count in ``micro_batches``), so the accumulated gradient is that of the token-weighted mean
    over the step (every assistant token of the global batch weighs the same, as in one
    unsplit batch), however the step was split. The returned ``loss`` and ``accuracy`` use the
    same denominator, so they sum over ranks. ``loss_positions_only`` computes the output head
    on the loss positions alone where the model allows it (``worker.training.logits``).
    ``scale`` multiplies each loss before its backward (an fp16 run's ``GradScaler.scale``).
    """
    # Labels are shifted by one against the logits; the count must be of the shifted labels.
    local = sum(int((mb.labels[:, 1:] != IGNORE_INDEX).sum()) for mb in micro_batches)
    denom = max(local if loss_tokens is None else loss_tokens, 1)
    split = split_head(model) if loss_positions_only else None
    loss_sum = 0.0
    correct = 0
    for mb in micro_batches:
        logits, targets = target_logits(model, mb, device, split)
        loss = F.cross_entropy(logits, targets, reduction="sum")
        scaled = loss / denom
        (scale(scaled) if scale is not None else scaled).backward()
        with torch.no_grad():
            correct += int((logits.argmax(dim=-1) == targets).sum())
            loss_sum += float(loss)
        del logits, loss
    return StepStats(
        loss=loss_sum / denom,
        accuracy=correct / denom,
        n_tokens=sum(mb.n_tokens for mb in micro_batches),
        n_loss_tokens=local,
    )


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    examples: Sequence[TokenizedExample],
    pad_token_id: int,
    device: torch.device,
    micro_batch_size: int = 8,
    micro_batch_tokens: int = 8192,
    parallel: DataParallel | None = None,
) -> EvalStats:
    """Token-weighted mean loss and next-token accuracy of ``model`` on ``examples``.

    Runs in eval mode (no dropout, no RNG draw, so evaluating never changes what training does
    next) and restores the previous mode. Under data parallelism each rank evaluates every
    ``world_size``-th example and the sums are reduced.
    """
    parallel = parallel or DataParallel()
    lengths = [len(ex) for ex in examples]
    mine = parallel.shard(range(len(examples)), lengths)
    split = split_head(model)
    was_training = model.training
    model.eval()
    sums = torch.zeros(3, dtype=torch.float64)
    parts = split_micro_batches(mine, lengths, micro_batch_size, micro_batch_tokens)
    batches = parallel.even_out(
        [collate([examples[i] for i in part], pad_token_id) for part in parts], pad_token_id
    )
    try:
        for batch in batches:
            logits, targets = target_logits(model, batch, device, split)
            sums[0] += float(F.cross_entropy(logits, targets, reduction="sum"))
            sums[1] += int((logits.argmax(dim=-1) == targets).sum())
            sums[2] += int(targets.numel())
    finally:
        model.train(was_training)
    sums = parallel.sum_(sums.to(parallel.comm_device())).cpu()
    n = max(int(sums[2]), 1)
    return EvalStats(loss=float(sums[0]) / n, accuracy=float(sums[1]) / n, n_loss_tokens=n)


def _preference_loader() -> Any:
    from worker.training.dpo import load_preference_dataset

    return load_preference_dataset


def _extra_metrics(metrics: Mapping[str, float | None]) -> dict[str, float | None]:
    """The metrics beyond OpenAI's keys (:data:`METRIC_KEYS`): DPO's quantities."""
    return {k: v for k, v in metrics.items() if k not in METRIC_KEYS}


def _save_adapter(
    model: PeftModel,
    output_dir: Path,
    base_model_name: str | None,
    quantization: tuple[str, torch.dtype] | None = None,
    state_dict: dict[str, torch.Tensor] | None = None,
) -> None:
    """Write the adapter's PEFT files (and the quantization record of a quantized base);
    ``state_dict``: the trainable weights gathered from a sharded model
    (``worker.training.fsdp.gather_adapter_state``)."""
    output_dir.mkdir(parents=True, exist_ok=True)
    for cfg in model.peft_config.values():
        if base_model_name:
            cfg.base_model_name_or_path = base_model_name
        # PEFT stores resolved "all-linear" targets as a set; sorted, the saved config is
        # byte-for-byte reproducible.
        targets = getattr(cfg, "target_modules", None)  # LoRA and DoRA configs have them
        if isinstance(targets, set):
            cfg.target_modules = sorted(targets)  # type: ignore[attr-defined]
    # Dorado never resizes the vocabulary, so the embedding layers need no saving; PEFT's
    # default ("auto") would find that out by fetching the base model's config.json from the
    # Hugging Face Hub under base_model_name_or_path (a Dorado name, not a Hub repository).
    model.save_pretrained(str(output_dir), save_embedding_layers=False, state_dict=state_dict)
    # PEFT also writes a boilerplate model card; the adapter directory is meant to hold exactly
    # the two files that loaders read.
    card = output_dir / "README.md"
    if card.exists():
        card.unlink()
    if quantization is not None:
        from worker.training.quantization import write_quantization

        write_quantization(output_dir, *quantization)


def train(
    spec: TrainSpec,
    base_model_dir: Path,
    training_file: Path,
    output_dir: Path,
    reporter: Reporter,
    *,
    validation_file: Path | None = None,
    resume_from: Path | None = None,
) -> TrainResult:
    """Train an adapter described by ``spec`` and save it to ``output_dir``.

    Args:
        spec: resolved hyperparameters; ``learning_rate`` is the final rate (the caller applies
            any multiplier or override); ``spec.options`` holds the engine's knobs.
        base_model_dir: a local Hugging Face model directory (config, safetensors, tokenizer
            with a chat template), e.g. one written by ``worker.model_builders``.
        training_file: a local chat JSONL file (see ``worker.training.data``).
        output_dir: created if missing; receives ``adapter_config.json`` and
            ``adapter_model.safetensors`` only on success.
        reporter: receives ``metrics`` after every ``log_every_n_steps``-th optimizer step, every
            step where a validation ran, each epoch's last step and the run's last step
            (1-based ``step``; loss and accuracy of that step; ``valid_*`` from a fixed sample
            of the validation set every ``eval_every_n_steps``; ``full_valid_*`` from the whole
            validation set at each epoch end; real tokens/s since the previous report),
            ``message`` for notable events, ``save_checkpoint`` for each checkpoint, and is asked
            ``should_stop`` then ``should_pause`` before every optimizer step.
        validation_file: an optional chat JSONL file for the ``valid_*`` metrics.
        resume_from: a local copy of a checkpoint directory of this same job; training
            continues at the step after it.

    Returns:
        The adapter directory, optimizer steps run, ``trained_tokens`` (every real,
        non-padding input token of every example in every epoch, prompt included, as OpenAI
        bills; not only the loss tokens) and the last step's loss. Steps and tokens are
        totals for the whole job, including those before a resume.

    Raises:
        TrainingStopped: ``reporter.should_stop()`` returned True; nothing is saved.
        TrainingPaused: ``reporter.should_pause()`` returned True; a checkpoint was saved.
        DatasetFormatError: a line of a data file is not a chat example.
        CheckpointMismatch: ``resume_from`` belongs to another run.
        ValueError: invalid hyperparameters, or no example has a trainable token.
        FloatingPointError: the loss became NaN or infinite (learning rate too high).
    """
    _validate(spec)
    parallel = DataParallel.current(sharded=spec.options.sharding == "fsdp")
    device, _ = select_device(spec.options.device, parallel)
    dtype = resolve_dtype(spec.options.precision, device)
    if parallel.sharded:
        from worker.training.fsdp import check_shardable

        check_shardable(dtype)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    try:
        run = _Run(spec, reporter, device, dtype, parallel)
        run.setup(
            Path(base_model_dir),
            Path(training_file),
            Path(validation_file) if validation_file else None,
            Path(resume_from) if resume_from else None,
        )
        run.train()
        return run.save(Path(output_dir))
    finally:
        # A worker process trains many jobs: release this one's memory promptly (best effort;
        # an exception's traceback keeps the frames alive until it is handled).
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()


class _Run:
    """One training run's state: built by :meth:`setup`, advanced by :meth:`train`."""

    def __init__(
        self,
        spec: TrainSpec,
        reporter: Reporter,
        device: torch.device,
        dtype: torch.dtype,
        parallel: DataParallel,
    ) -> None:
        self.spec = spec
        self.reporter = reporter
        self.device = device
        self.dtype = dtype
        self.parallel = parallel
        self.options = spec.options
        self.job = spec.options.log_label
        self.group_multiplier = spec.options.group_size_multiplier or GROUP_SIZE_MULTIPLIER

    # setup

    def setup(
        self,
        base_model_dir: Path,
        training_file: Path,
        validation_file: Path | None,
        resume_from: Path | None,
    ) -> None:
        spec = self.spec
        quantization = spec.adapter.quantization
        # How a quantized base was stored goes with every adapter it trains (serving, merging).
        self.quantization = (quantization, self.dtype) if quantization else None
        base: PreTrainedModel | None = None
        tokenizer: PreTrainedTokenizerBase
        if self.parallel.sharded and quantization is None:
            # Every rank builds the model on the meta device; rank 0 loads it (_sharded_model).
            from transformers import AutoConfig, AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(base_model_dir)
            config = AutoConfig.from_pretrained(base_model_dir)
        else:
            base, tokenizer = _load_model(base_model_dir, self.device, self.dtype, quantization)
            config = base.config
        max_len = resolve_max_seq_length(spec, config)
        load = _preference_loader() if spec.dpo is not None else load_dataset
        dataset = load(training_file, tokenizer, max_len)
        self._tell(lambda: _report_dataset(dataset, self.reporter))
        if not dataset.examples:
            raise ValueError("the training file has no example with trainable assistant tokens")
        # TokenizedExample, or PreferencePair for DPO (lengths: both rows' real tokens).
        self.examples: Sequence[Any] = dataset.examples
        self.lengths = [len(ex) for ex in self.examples]
        self.predicted = (
            [] if spec.dpo is not None else [ex.n_predicted_tokens for ex in self.examples]
        )
        self.valid: Sequence[Any] = ()
        self.valid_sample: list[Any] = []
        self.valid_picks: list[int] = []  # the sample's positions in self.valid
        if validation_file is not None:
            valid = load(validation_file, tokenizer, max_len)
            self._tell(lambda: _report_dataset(valid, self.reporter, "validation "))
            self.valid = valid.examples
            wanted = self.options.valid_sample_size or max(spec.batch_size, 16)
            size = min(len(self.valid), wanted)
            picks = random.Random(f"{spec.seed}:valid").sample(range(len(self.valid)), size)
            self.valid_picks = sorted(picks)
            self.valid_sample = [self.valid[i] for i in self.valid_picks]

        if not self.parallel.sharded:
            assert base is not None
            self.model = enable_fast_forwards(self._adapted(base), self.spec)
        elif base is None:
            self.model = self._sharded_model(base_model_dir, config, resume_from)
        else:
            self.model = self._sharded_in_place(base, resume_from)
        self.model.train()
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = build_optimizer(self.model, spec)
        self.scaler = grad_scaler(self.dtype, self.device)
        if spec.adapter.type == "dora":
            from worker.training.fast_dora import forget_adapted_norms

            # Not every optimizer's in-place update bumps the version counters that key the
            # cached DoRA norms (fused AdamW does not): forget them at every step.
            model = self.model
            self.optimizer.register_step_post_hook(lambda *_: forget_adapted_norms(model))
        self.steps_per_epoch = n_batches_per_epoch(len(self.examples), spec.batch_size)
        self.total_steps = spec.n_epochs * self.steps_per_epoch
        warmup = math.ceil(spec.warmup_ratio * self.total_steps)
        kind = self.options.lr_scheduler
        total = self.total_steps
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_factor(s, total, warmup, kind)
        )
        self.pad_id = _pad_token_id(tokenizer)
        self.eval_every = eval_interval(spec, self.total_steps)
        if resume_from is not None and self.options.group_size_multiplier is None:
            # A checkpoint written under an older default continues with its own batches.
            written = read_training_state(resume_from).fingerprint.get("group_size_multiplier")
            self.group_multiplier = int(written or self.group_multiplier)
        self.reference: torch.Tensor | None = None
        self.valid_reference: torch.Tensor | None = None
        if spec.dpo is not None:
            self._reference_tables(resume_from)
        self.fingerprint = self._fingerprint(max_len)
        self.state = TrainingState(
            step=0,
            total_steps=self.total_steps,
            epoch=0,
            step_in_epoch=0,
            trained_tokens=0,
            last_loss=None,
            fingerprint=self.fingerprint,
        )
        if resume_from is not None:
            self.state = self._resume(resume_from)
            self._tell(lambda: self.reporter.message(f"Resumed from step {self.state.step}"))
        self._tell(
            lambda: self.reporter.message(
                ("DPO: " if spec.dpo is not None else "")
                + f"Training a {spec.adapter.type} adapter (r={spec.adapter.r}) on "
                f"{len(self.examples)} examples: {self.total_steps} steps "
                f"({spec.n_epochs} epochs x {self.steps_per_epoch}) on {self.device.type}"
                + (f" x {self.parallel.world_size}" if self.parallel.world_size > 1 else "")
            )
        )
        logger.info(
            "[job %s] %d steps on %s (%s), from step %d",
            self.job,
            self.total_steps,
            self.device,
            self.dtype,
            self.state.step,
        )

    def _reference_tables(self, resume_from: Path | None) -> None:
        """DPO's reference log-probabilities of the training and validation pairs, once per
        run: the policy the run starts from never changes. A fresh adapter starts as the base
        model (LoRA's B is 0, DoRA's magnitude the weight's norm): the adapter is switched off.
        A run continuing a parent adapter starts from the parent: the adapter is kept on, as
        loaded. Checkpoints keep the tables (:data:`REFERENCE_FILE`), and a resumed run reads
        them back: a sharded run has loaded its checkpoint's adapter before it could compute
        them. A checkpoint without them (written before they were kept) has them computed
        again here, before an unsharded run restores its checkpoint's adapter, so that the
        reference is still the parent's."""
        from worker.training.dpo import reference_table

        kept = Path(resume_from) / REFERENCE_FILE if resume_from is not None else None
        if kept is not None and kept.is_file():
            tables = torch.load(kept, map_location="cpu", weights_only=True)
            if len(tables["train"]) == len(self.examples) and (
                tables["valid"] is None or len(tables["valid"]) == len(self.valid)
            ):
                self.reference, self.valid_reference = tables["train"], tables["valid"]
                return
            raise CheckpointMismatch("the checkpoint's DPO reference is for other data")
        if kept is not None and self.parallel.sharded and self.spec.init_adapter_dir is not None:
            logger.warning(
                "[job %s] the checkpoint keeps no DPO reference: computed from its adapter",
                self.job,
            )

        def table(pairs: Sequence[Any]) -> torch.Tensor:
            return reference_table(
                self.model,
                cast("Sequence[PreferencePair]", pairs),
                self.pad_id,
                self.device,
                self.options.micro_batch_size,
                self.options.micro_batch_tokens,
                self.parallel,
                with_adapter=self.spec.init_adapter_dir is not None,
            )

        self.reference = table(self.examples)
        if self.valid:
            self.valid_reference = table(self.valid)

    def _adapted(self, base: PreTrainedModel) -> PeftModel:
        """``base`` with the adapter attached (initialised from the run's seed, then from the
        parent adapter of a continued fine-tune)."""
        spec = self.spec
        model = adapted(base, spec)
        if spec.init_adapter_dir is not None:
            loaded = load_adapter_weights(model, spec.init_adapter_dir)
            logger.info("[job %s] adapter starts from its parent (%d tensors)", self.job, loaded)
        return model

    def _sharded_model(
        self, base_model_dir: Path, config: PretrainedConfig, resume_from: Path | None
    ) -> PeftModel:
        """The model sharded with FSDP: rank 0 loads it (and a resumed adapter) on the CPU and
        broadcasts every weight into the ranks' shards; no rank holds another full copy."""
        from transformers import AutoModelForCausalLM

        from worker.training.fsdp import build_sharded_model

        def build() -> PeftModel:
            base = AutoModelForCausalLM.from_config(config, dtype=self.dtype)
            return enable_fast_forwards(adapted(base, self.spec), self.spec)

        def load_full() -> PeftModel:
            # Seeded as a single process is, so the initial adapter is the same.
            base, _ = _load_model(base_model_dir, torch.device("cpu"), self.dtype)
            model = self._adapted(base)
            if resume_from is not None:
                load_checkpoint_adapter(resume_from, model)
            return model

        return build_sharded_model(build, load_full if self.parallel.is_main else None, self.device)

    def _sharded_in_place(self, base: PreTrainedModel, resume_from: Path | None) -> PeftModel:
        """A quantized ``base`` (loaded by every rank: bitsandbytes quantizes while loading,
        so there is no meta-device build) with the adapter attached, then sharded with FSDP.
        Quantizing is deterministic and the adapter seeded, so every rank starts the same."""
        from worker.training.fsdp import shard

        model = enable_fast_forwards(self._adapted(base), self.spec)
        if resume_from is not None:
            load_checkpoint_adapter(resume_from, model)
        shard(model, self.device)
        return model

    def _resume(self, resume_from: Path) -> TrainingState:
        if not self.parallel.sharded:
            return load_training_checkpoint(
                resume_from,
                self.model,
                self.optimizer,
                self.scheduler,
                self.fingerprint,
                self.scaler,
            )
        from worker.training.fsdp import load_optimizer_state

        # The adapter weights were loaded before sharding (_sharded_model, _sharded_in_place).
        return load_training_checkpoint(
            resume_from,
            None,
            self.optimizer,
            self.scheduler,
            self.fingerprint,
            self.scaler,
            lambda state: load_optimizer_state(self.model, self.optimizer, state),
        )

    def _fingerprint(self, max_len: int) -> dict[str, Any]:
        spec = self.spec
        # Only a quantized run adds its key: checkpoints of full-precision runs stay valid.
        quantized = {"quantization": spec.adapter.quantization} if self.quantization else {}
        return {
            **quantized,
            "n_examples": len(self.examples),
            "n_tokens": sum(self.lengths),
            "n_valid_examples": len(self.valid),
            "n_epochs": spec.n_epochs,
            "batch_size": spec.batch_size,
            "seed": spec.seed,
            "learning_rate": spec.learning_rate,
            "adapter": [spec.adapter.type, spec.adapter.r, spec.adapter.alpha],
            "max_seq_length": max_len,
            "group_size_multiplier": self.group_multiplier,
            "total_steps": self.total_steps,
            # Only DPO runs carry these: supervised checkpoints keep resuming as before.
            **({"method": "dpo", "beta": spec.dpo.beta} if spec.dpo is not None else {}),
        }

    def _tell(self, fn: Any) -> None:
        if self.parallel.is_main:
            fn()

    # train

    def train(self) -> None:
        """Run the remaining optimizer steps, checkpointing and reporting on the way."""
        spec, state = self.spec, self.state
        window_tokens, window_time = 0, 0.0
        for epoch in range(state.epoch, spec.n_epochs):
            plan = plan_epoch(
                self.lengths, spec.batch_size, spec.seed, epoch, self.group_multiplier
            )
            start = state.step_in_epoch if epoch == state.epoch else 0
            for index in range(start, len(plan)):
                self._check_control()
                began = time.perf_counter()
                stats = self._step(plan[index])
                window_time += time.perf_counter() - began
                window_tokens += stats.n_tokens
                state.step += 1
                state.trained_tokens += stats.n_tokens
                state.last_loss = stats.loss
                epoch_end = index == len(plan) - 1
                state.epoch, state.step_in_epoch = (
                    (epoch + 1, 0) if epoch_end else (epoch, index + 1)
                )
                metrics = self._metrics(stats, epoch_end)
                state.history.append(metrics)
                if self._due_report(metrics, epoch_end):
                    tps = window_tokens / window_time if window_time > 0 else None
                    self._report(metrics, tps)
                    window_tokens, window_time = 0, 0.0
                if epoch_end:
                    self._checkpoint("epoch_end")
                elif spec.checkpoint_every_n_steps and (
                    state.step % spec.checkpoint_every_n_steps == 0
                ):
                    self._checkpoint("interval")

    def _check_control(self) -> None:
        step = self.state.step
        if self.parallel.agree(self.parallel.is_main and self.reporter.should_stop()):
            logger.info("[job %s] stop requested before step %d", self.job, step + 1)
            raise TrainingStopped(f"stopped before step {step + 1} of {self.total_steps}")
        if self.parallel.agree(self.parallel.is_main and self.reporter.should_pause()):
            logger.info("[job %s] pause requested after step %d", self.job, step)
            self._checkpoint("pause")
            raise TrainingPaused(step)

    def _step(self, indices: Sequence[int]) -> StepStats:
        """One optimizer step on the examples ``indices``; returns the whole step's stats."""
        self.optimizer.zero_grad(set_to_none=True)
        if self.spec.dpo is not None:
            return self._dpo_step(indices)
        mine = self.parallel.shard(indices, self.lengths)
        micro = step_micro_batches(
            self.examples,
            mine,
            self.lengths,
            self.pad_id,
            self.options.micro_batch_size,
            self.options.micro_batch_tokens,
            self.options.micro_batch_overhead_tokens,
        )
        micro = self.parallel.even_out(micro, self.pad_id)
        loss_tokens = sum(self.predicted[i] for i in indices)
        local = forward_backward(
            self.model,
            micro,
            self.device,
            loss_tokens,
            self.options.loss_positions_only,
            self.scaler.scale,
        )
        self.parallel.sum_gradients(self.trainable)
        sums = torch.tensor([local.loss, local.accuracy], dtype=torch.float64)
        loss, accuracy = self.parallel.sum_(sums.to(self.parallel.comm_device())).tolist()
        self._apply_gradients(loss)
        return StepStats(
            loss=loss,
            accuracy=accuracy,
            n_tokens=sum(self.lengths[i] for i in indices),
            n_loss_tokens=loss_tokens,
        )

    def _dpo_step(self, indices: Sequence[int]) -> StepStats:
        """:meth:`_step` for DPO: ``indices`` are preference pairs; the loss is their mean."""
        from worker.training.dpo import (
            DPO_METRIC_KEYS,
            dpo_forward_backward,
            even_pair_batches,
            pair_micro_batches,
        )

        assert self.spec.dpo is not None
        options = self.options
        mine = self.parallel.shard(indices, self.lengths)
        micro = pair_micro_batches(
            self.examples,
            mine,
            self.pad_id,
            options.micro_batch_size,
            options.micro_batch_tokens,
            options.micro_batch_overhead_tokens,
        )
        micro = even_pair_batches(micro, self.pad_id, self.parallel)
        local = dpo_forward_backward(
            self.model,
            micro,
            self.device,
            self.spec.dpo.beta,
            len(indices),
            options.loss_positions_only,
            self.reference,
            self.scaler.scale,
        )
        self.parallel.sum_gradients(self.trainable)
        names = ("loss", *DPO_METRIC_KEYS)
        sums = torch.tensor([getattr(local, k) for k in names], dtype=torch.float64)
        totals = self.parallel.sum_(sums.to(self.parallel.comm_device())).tolist()
        values = dict(zip(names, totals, strict=True))
        self._apply_gradients(values["loss"])
        return StepStats(
            loss=values["loss"],
            accuracy=values["preference_accuracy"],
            n_tokens=sum(self.lengths[i] for i in indices),
            n_loss_tokens=len(indices),
            extra={f"train_{k}": values[k] for k in DPO_METRIC_KEYS},
        )

    def _apply_gradients(self, loss: float) -> None:
        if not math.isfinite(loss):
            raise FloatingPointError(
                f"training loss became {loss} at step {self.state.step + 1}; "
                "try a lower learning rate"
            )
        # The scaler is a pass-through but for fp16, where it unscales the gradients before
        # clipping and skips (then lowers the scale after) a step whose gradients overflowed.
        self.scaler.unscale_(self.optimizer)
        if self.spec.max_grad_norm and self.spec.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.trainable, self.spec.max_grad_norm)
        scale = self.scaler.get_scale()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.scaler.get_scale() >= scale:  # a skipped step leaves the schedule (as Accelerate)
            self.scheduler.step()

    def _metrics(self, stats: StepStats, epoch_end: bool) -> dict[str, float | None]:
        step = self.state.step
        metrics: dict[str, float | None] = dict.fromkeys(METRIC_KEYS)
        if self.spec.dpo is not None:
            from worker.training.dpo import DPO_METRIC_KEYS

            for prefix in ("train", "valid", "full_valid"):
                metrics.update(dict.fromkeys(f"{prefix}_{k}" for k in DPO_METRIC_KEYS))
        metrics.update(step=step, train_loss=stats.loss, train_mean_token_accuracy=stats.accuracy)
        metrics.update(stats.extra)
        if not self.valid:
            return metrics
        if step % self.eval_every == 0 or step == self.total_steps:
            sample = self._evaluate(self.valid_sample, self.valid_picks)
            metrics.update(valid_loss=sample.loss, valid_mean_token_accuracy=sample.accuracy)
            metrics.update({f"valid_{k}": v for k, v in sample.extra.items()})
        if epoch_end:
            full = self._evaluate(self.valid, range(len(self.valid)))
            metrics.update(full_valid_loss=full.loss, full_valid_mean_token_accuracy=full.accuracy)
            metrics.update({f"full_valid_{k}": v for k, v in full.extra.items()})
        return metrics

    def _evaluate(self, examples: Sequence[Any], positions: Sequence[int]) -> EvalStats:
        """Validation on ``examples``, which are ``self.valid[positions]``."""
        if self.spec.dpo is not None:
            from worker.training.dpo import DPO_METRIC_KEYS, dpo_evaluate

            assert self.valid_reference is not None
            found = dpo_evaluate(
                self.model,
                examples,
                self.pad_id,
                self.device,
                self.spec.dpo.beta,
                self.options.micro_batch_size,
                self.options.micro_batch_tokens,
                self.parallel,
                self.valid_reference[list(positions)],
            )
            return EvalStats(
                loss=found.loss,
                accuracy=found.preference_accuracy,
                n_loss_tokens=len(examples),
                extra={k: getattr(found, k) for k in DPO_METRIC_KEYS},
            )
        return evaluate(
            self.model,
            examples,
            self.pad_id,
            self.device,
            self.options.micro_batch_size,
            self.options.micro_batch_tokens,
            self.parallel,
        )

    def _due_report(self, metrics: dict[str, float | None], epoch_end: bool) -> bool:
        step = self.state.step
        return (
            step % self.spec.log_every_n_steps == 0
            or step == self.total_steps
            or epoch_end
            or metrics["valid_loss"] is not None
        )

    def _report(self, metrics: dict[str, float | None], tokens_per_second: float | None) -> None:
        if not self.parallel.is_main:
            return
        self.reporter.metrics(
            self.state.step,
            self.total_steps,
            float(metrics["train_loss"] or 0.0),
            float(metrics["train_mean_token_accuracy"] or 0.0),
            valid_loss=metrics["valid_loss"],
            valid_mean_token_accuracy=metrics["valid_mean_token_accuracy"],
            full_valid_loss=metrics["full_valid_loss"],
            full_valid_mean_token_accuracy=metrics["full_valid_mean_token_accuracy"],
            tokens_per_second=tokens_per_second,
            # DPO's quantities; only passed when there are some (older reporters lack it).
            **({"extra": extra} if (extra := _extra_metrics(metrics)) else {}),
        )
        logger.debug("[job %s] step %d/%d %s", self.job, self.state.step, self.total_steps, metrics)

    def _checkpoint(self, reason: CheckpointReason) -> None:
        """Write a checkpoint of the current state, hand it to the reporter, delete it."""
        state = self.state
        adapter_state, optimizer_state = self._gathered()
        if self.parallel.is_main:
            metrics = state.history[-1] if state.history else {**dict.fromkeys(METRIC_KEYS)}
            metrics = {**metrics, "step": state.step}
            parent = Path(tempfile.mkdtemp(prefix="dorado-ckpt-"))
            directory = parent / f"step-{state.step:06d}"
            try:
                save_training_checkpoint(
                    directory,
                    self.model,
                    self.optimizer,
                    self.scheduler,
                    state,
                    lambda m, d: _save_adapter(
                        m, d, self.options.base_model_name, self.quantization, adapter_state
                    ),
                    self.scaler,
                    optimizer_state,
                )
                if self.reference is not None:
                    tables = {"train": self.reference, "valid": self.valid_reference}
                    torch.save(tables, directory / REFERENCE_FILE)
                # The step's epoch, 1-based; a pause before any step belongs to epoch 1.
                epoch = max(1, math.ceil(state.step / self.steps_per_epoch))
                self.reporter.save_checkpoint(
                    CheckpointInfo(
                        step=state.step,
                        total_steps=self.total_steps,
                        epoch=epoch,
                        directory=directory,
                        metrics=metrics,
                        reason=reason,
                    )
                )
            finally:
                shutil.rmtree(parent, ignore_errors=True)
            logger.info("[job %s] %s checkpoint at step %d", self.job, reason, state.step)
        self.parallel.barrier()

    def _gathered(self) -> tuple[dict[str, torch.Tensor] | None, dict[str, Any] | None]:
        """Under FSDP, the adapter and optimizer state gathered onto rank 0 (a collective)."""
        if not self.parallel.sharded:
            return None, None
        from worker.training.fsdp import gather_adapter_state, gather_optimizer_state

        return gather_adapter_state(self.model), gather_optimizer_state(self.model, self.optimizer)

    # save

    def save(self, output_dir: Path) -> TrainResult:
        """Write the final adapter (rank 0) and return the run's totals."""
        adapter_state = None
        if self.parallel.sharded:
            from worker.training.fsdp import gather_adapter_state

            adapter_state = gather_adapter_state(self.model)
        if self.parallel.is_main:
            _save_adapter(
                self.model,
                output_dir,
                self.options.base_model_name,
                self.quantization,
                adapter_state,
            )
            logger.info(
                "[job %s] saved adapter to %s after %d steps", self.job, output_dir, self.state.step
            )
        self.parallel.barrier()
        return TrainResult(
            adapter_dir=output_dir,
            steps=self.state.step,
            trained_tokens=self.state.trained_tokens,
            final_train_loss=self.state.last_loss,
        )
