"""Typed options: how the engine runs a :class:`~worker.training.spec.TrainSpec`
(:class:`EngineOptions`), and the training extras a job stores (:class:`JobOptions`).

Both are frozen and validated on construction, so a misspelt name (a ``TypeError`` from the
dataclass) or a bad value (a ``ValueError`` naming the field) fails before any model loads.
This module imports neither torch nor the database: the task builds the options, the engine
reads them.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, Literal, get_args

LrScheduler = Literal["linear", "cosine", "constant"]
LR_SCHEDULERS: tuple[str, ...] = get_args(LrScheduler)
Sharding = Literal["ddp", "fsdp"]
SHARDINGS: tuple[str, ...] = get_args(Sharding)

FSDP_FP16 = (
    'precision "fp16" cannot be combined with sharding "fsdp" (its loss scaler does not '
    'unscale sharded gradients): use precision "bf16" or "fp32", or sharding "ddp"'
)
FSDP_INT8 = (
    'adapter.quantization "int8" cannot be combined with sharding "fsdp" (bitsandbytes\' '
    '8-bit weights cannot be split across ranks): use quantization "nf4", or sharding "ddp"'
)

Precision = Literal["auto", "fp32", "bf16", "fp16"]
PRECISIONS: tuple[str, ...] = get_args(Precision)
"""The numeric precision of training (``worker.training.precision``): ``"auto"`` picks bf16 on a
GPU that has it or a CPU with fast bf16 matrix products (AMX / AVX512-BF16), fp32 elsewhere;
the others force one."""

GROUP_SIZE_MULTIPLIER = 1
"""Length grouping sorts within shuffled groups of ``batch_size * GROUP_SIZE_MULTIPLIER``.

1 (the default) forms every batch at random, as Hugging Face's ``Trainer`` does; padding is
then cut by :func:`worker.training.data.split_micro_batches` within each batch. Larger values
make batches homogeneous in length, which pads less but changes the optimisation: a batch of
only short (or only long) replies pulls the adapter its own way, and in short runs Adam's
normalised steps then partly cancel each other (measured: held-out loss 2.34 grouped vs 2.25
random after 4 steps of bench/train_throughput.py).
"""

MICRO_BATCH_OVERHEAD_TOKENS = 32
"""What one extra micro-batch is taken to cost, in padded tokens, when splitting a batch.

32 keeps padding near 5% on random batches of skewed lengths (bench/skewed_chat.py: 5.6% at
32, 8.2% at 64; 49-231 tokens, batch 8) at about three micro-batches per step of 8.
"""

DEVICE_KINDS = ("cpu", "cuda", "mps")


@dataclass(frozen=True)
class EngineOptions:
    """The engine's optional knobs, each with its default.

    Results (these change what is trained):

    * ``lr_scheduler``: decay after the linear warmup, ``"linear"``, ``"cosine"`` or
      ``"constant"``.
    * ``group_size_multiplier``: length grouping of batches (:data:`GROUP_SIZE_MULTIPLIER`,
      ``worker.training.data.plan_epoch``). ``None``: the default, except that a resumed run
      keeps the value its checkpoint was written with, so a job paused across a change of the
      default continues with its own batches.
    * ``valid_sample_size``: examples in the sampled validation (``None``:
      ``max(batch_size, 16)``).

    Speed and memory (same results within float rounding):

    * ``micro_batch_size`` and ``micro_batch_tokens``: the gradient-accumulation split of each
      optimizer batch (and of validation), in examples and padded tokens.
    * ``micro_batch_overhead_tokens``: what one more micro-batch is taken to cost when the split
      also cuts padding (:data:`MICRO_BATCH_OVERHEAD_TOKENS`).
    * ``fast_dora``: DoRA's weight norm without materialising the weight
      (``worker.training.fast_dora``).
    * ``fused_adapters``: the LoRA/DoRA term added inside one matrix product
      (``worker.training.fused_adapter``).
    * ``loss_positions_only``: the output head computed only where the loss reads it
      (``worker.training.logits``).
    * ``device``: ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"mps"`` instead of the automatic
      choice (a CUDA GPU when there is one).
    * ``precision``: :data:`Precision`; bf16 keeps the frozen base in bf16 and the adapter,
      optimizer state and loss in float32. ``None`` (the engine's default, exact and
      unchanged): bf16 on a CUDA GPU that has it, fp32 elsewhere; the worker passes the job's
      ``precision`` option, ``"auto"`` unless the job forces one.
    * ``sharding``: how a run on several ranks splits the model: ``"ddp"`` (every rank holds
      the whole model; gradients summed by ``worker.training.parallel``) or ``"fsdp"`` (FSDP2
      per decoder layer, ``worker.training.fsdp``: base, adapter and optimizer state split
      across ranks, for models that do not fit one device). Ignored by a single process.
      ``"fsdp"`` refuses precision ``"fp16"`` (:data:`FSDP_FP16`) and an int8 base
      (:data:`FSDP_INT8`); an nf4 base is sharded too.

    Labels:

    * ``base_model_name``: written as ``base_model_name_or_path`` in ``adapter_config.json``
      instead of the local directory the base model was loaded from.
    * ``job_id``: put on every log line of the run.

    The learning rate is not here: ``TrainSpec.learning_rate`` is the final, absolute rate.
    """

    lr_scheduler: LrScheduler = "linear"
    group_size_multiplier: int | None = None
    valid_sample_size: int | None = None
    micro_batch_size: int = 8
    micro_batch_tokens: int = 8192
    micro_batch_overhead_tokens: int = MICRO_BATCH_OVERHEAD_TOKENS
    fast_dora: bool = True
    fused_adapters: bool = True
    loss_positions_only: bool = True
    device: str | None = None
    precision: Precision | None = None
    sharding: Sharding = "ddp"
    base_model_name: str | None = None
    job_id: str | None = None

    def __post_init__(self) -> None:
        if self.lr_scheduler not in LR_SCHEDULERS:
            raise ValueError(
                f"lr_scheduler must be one of {', '.join(LR_SCHEDULERS)}, got {self.lr_scheduler!r}"
            )
        _check_int(self, "group_size_multiplier", minimum=1, optional=True)
        _check_int(self, "valid_sample_size", minimum=1, optional=True)
        _check_int(self, "micro_batch_size", minimum=1)
        _check_int(self, "micro_batch_tokens", minimum=1)
        _check_int(self, "micro_batch_overhead_tokens", minimum=0)
        for name in ("fast_dora", "fused_adapters", "loss_positions_only"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
        _check_device(self.device)
        if self.precision is not None:
            _check_precision(self.precision)
        if self.sharding not in SHARDINGS:
            raise ValueError(
                f"sharding must be one of {', '.join(SHARDINGS)}, got {self.sharding!r}"
            )
        if self.sharding == "fsdp" and self.precision == "fp16":
            raise ValueError(FSDP_FP16)
        for name in ("base_model_name", "job_id"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value.strip()):
                raise ValueError(f"{name} must be a non-empty string or None, got {value!r}")

    @property
    def log_label(self) -> str:
        """The job id for log lines, ``"-"`` outside a job."""
        return self.job_id or "-"


@dataclass(frozen=True)
class JobOptions:
    """The Dorado extras of a job (``Job.options``) that shape its training run.

    ``learning_rate`` is the one learning-rate override: an absolute rate that replaces the
    adapter type's base rate times ``learning_rate_multiplier``. ``max_seq_length``,
    ``checkpoint_every_n_steps``, ``warmup_ratio``, ``weight_decay`` and
    ``gradient_checkpointing`` go to the same-named ``TrainSpec`` fields; ``lr_scheduler``,
    ``micro_batch_tokens`` and ``precision`` to :class:`EngineOptions`. The job's ``training``
    options (``core.jobs.hyperparams.TrainingOptions``) are stored resolved, so none is
    ``"auto"`` here; ``None`` keeps the engine's default. ``precision`` forces fp32 or bf16
    instead of the worker's automatic choice (:data:`Precision`; a job without one trains
    with ``"auto"``).
    """

    learning_rate: float | None = None
    max_seq_length: int | None = None
    checkpoint_every_n_steps: int | None = None
    warmup_ratio: float | None = None
    weight_decay: float | None = None
    lr_scheduler: LrScheduler | None = None
    gradient_checkpointing: bool | None = None
    micro_batch_tokens: int | None = None
    precision: Precision | None = None

    def __post_init__(self) -> None:
        rate = self.learning_rate
        if rate is not None and (
            isinstance(rate, bool) or not isinstance(rate, (int, float)) or not rate > 0
        ):
            raise ValueError(f"learning_rate must be a number > 0, got {rate!r}")
        _check_int(self, "max_seq_length", minimum=2, optional=True)
        _check_int(self, "checkpoint_every_n_steps", minimum=1, optional=True)
        _check_int(self, "micro_batch_tokens", minimum=1, optional=True)
        _check_fraction(self, "warmup_ratio", below=1.0)
        _check_fraction(self, "weight_decay", below=None)
        if self.lr_scheduler is not None and self.lr_scheduler not in LR_SCHEDULERS:
            raise ValueError(
                f"lr_scheduler must be one of {', '.join(LR_SCHEDULERS)}, got {self.lr_scheduler!r}"
            )
        checkpointing = self.gradient_checkpointing
        if checkpointing is not None and not isinstance(checkpointing, bool):
            raise ValueError(f"gradient_checkpointing must be True or False, got {checkpointing!r}")
        if self.precision is not None:
            _check_precision(self.precision)

    def engine_options(self, sharding: Sharding = "ddp", **labels: Any) -> EngineOptions:
        """The :class:`EngineOptions` of this job: its ``lr_scheduler`` and
        ``micro_batch_tokens`` where set, the defaults otherwise, its ``precision``
        (``"auto"`` unless the job forces one), the memory planner's ``sharding`` (the job's
        ``resources``), plus ``labels`` (``base_model_name``, ``job_id``)."""
        chosen = {
            name: getattr(self, name)
            for name in ("lr_scheduler", "micro_batch_tokens")
            if getattr(self, name) is not None
        }
        return EngineOptions(
            **chosen, precision=self.precision or "auto", sharding=sharding, **labels
        )

    @classmethod
    def from_stored(cls, options: Mapping[str, Any] | None) -> JobOptions:
        """Parse a job's stored options: the training keys are read, the keys in
        :data:`PLATFORM_JOB_OPTIONS` are skipped (the platform reads them), any other key is
        an error (stored by a platform version this worker does not know)."""
        options = options or {}
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - known - PLATFORM_JOB_OPTIONS)
        if unknown:
            raise ValueError(
                f"unknown job option {', '.join(map(repr, unknown))}"
                f"{_suggestion(unknown[0], known | PLATFORM_JOB_OPTIONS)}; "
                f"this worker knows {', '.join(sorted(known | PLATFORM_JOB_OPTIONS))}"
            )
        return cls(**{k: v for k, v in options.items() if k in known and v is not None})


PLATFORM_JOB_OPTIONS = frozenset(
    {"keep_checkpoints", "max_run_seconds", "parent", "parent_job_id", "nodes"}
)
"""Job options that are not the engine's: ``keep_checkpoints`` (checkpoint retention,
``core.jobs.checkpoints``), ``max_run_seconds`` (the task's run-time limit), ``parent`` and
``parent_job_id`` (continued fine-tuning: the task fetches that model's adapter for
``TrainSpec.init_adapter_dir``), ``nodes`` (the hosts of a multi-node job, which the task
sets up).
:meth:`JobOptions.from_stored` skips them on purpose."""


def _check_int(obj: object, name: str, *, minimum: int, optional: bool = False) -> None:
    value = getattr(obj, name)
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(
            f"{name} must be an integer >= {minimum}{' or None' if optional else ''}, got {value!r}"
        )


def _check_fraction(obj: object, name: str, *, below: float | None) -> None:
    value = getattr(obj, name)
    if value is None:
        return
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or value < 0
        or (below is not None and value >= below)
    ):
        bound = f" and < {below}" if below is not None else ""
        raise ValueError(f"{name} must be a number >= 0{bound} or None, got {value!r}")


def _check_precision(precision: object) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")


def _check_device(device: object) -> None:
    if device is None:
        return
    kind, _, index = device.partition(":") if isinstance(device, str) else ("", "", "")
    if kind not in DEVICE_KINDS or (index and not (kind == "cuda" and index.isdigit())):
        raise ValueError(f'device must be "cpu", "cuda", "cuda:N", "mps" or None, got {device!r}')


def _suggestion(name: str, known: set[str] | frozenset[str]) -> str:
    close = difflib.get_close_matches(name, sorted(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""
