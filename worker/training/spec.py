"""The frozen description of one training run, built by the task from a Job row.

The training engine depends only on this module, never on the database or the API.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

from worker.training.options import EngineOptions


@dataclass(frozen=True)
class AdapterSpec:
    """Which PEFT adapter to train. ``type == "dora"`` sets ``use_dora=True``.

    ``quantization`` stores the frozen base in 4-bit NF4 (``"nf4"``, QLoRA/QDoRA) or 8-bit
    (``"int8"``) with bitsandbytes while the adapter trains in float32.
    """

    type: Literal["lora", "dora"] = "dora"
    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    target_modules: str | tuple[str, ...] = "all-linear"
    quantization: Literal["nf4", "int8"] | None = None


@dataclass(frozen=True)
class DpoSpec:
    """Train by Direct Preference Optimization (``worker.training.dpo``) on preference pairs;
    ``beta`` scales the implicit rewards (OpenAI's bounds: 0 < beta <= 2)."""

    beta: float = 0.1

    def __post_init__(self) -> None:
        if isinstance(self.beta, bool) or not isinstance(self.beta, (int, float)):
            raise ValueError(f"beta must be a number, got {self.beta!r}")
        if not 0 < self.beta <= 2:
            raise ValueError(f"beta must be greater than 0 and at most 2, got {self.beta}")


@dataclass(frozen=True)
class TrainSpec:
    """Resolved hyperparameters (no "auto" left) for one run.

    ``checkpoint_every_n_steps`` adds checkpoints between the ones written at every epoch end;
    ``eval_every_n_steps`` is how often the sampled validation runs (``None``: about ten times
    per run); ``gradient_checkpointing`` trades compute for activation memory.
    ``learning_rate`` is the final, absolute rate (the caller applies any multiplier or
    override); ``options`` holds the engine's other knobs (:class:`EngineOptions`).
    ``dpo`` set: the training and validation files hold preference pairs and the loss is DPO's;
    ``None``: supervised fine-tuning on chat examples. ``init_adapter_dir`` (continued
    fine-tuning): a saved PEFT adapter of the same type, rank and targets whose weights the
    adapter starts from instead of its fresh initialisation.
    """

    adapter: AdapterSpec
    n_epochs: int
    batch_size: int
    learning_rate: float
    seed: int
    max_seq_length: int | None = None
    warmup_ratio: float = 0.0
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    log_every_n_steps: int = 1
    options: EngineOptions = field(default_factory=EngineOptions)
    checkpoint_every_n_steps: int | None = None
    eval_every_n_steps: int | None = None
    gradient_checkpointing: bool = False
    dpo: DpoSpec | None = None
    init_adapter_dir: Path | None = None


@dataclass(frozen=True)
class TrainResult:
    """What a finished run produced. ``adapter_dir`` holds a PEFT adapter.

    ``steps`` and ``trained_tokens`` are totals for the whole job, steps run before a resume
    included.
    """

    adapter_dir: Path
    steps: int
    trained_tokens: int
    final_train_loss: float | None


CheckpointReason = Literal["epoch_end", "interval", "pause"]

METRIC_KEYS = (
    "step",
    "train_loss",
    "train_mean_token_accuracy",
    "valid_loss",
    "valid_mean_token_accuracy",
    "full_valid_loss",
    "full_valid_mean_token_accuracy",
)
"""The keys of :attr:`CheckpointInfo.metrics`."""


@dataclass(frozen=True)
class CheckpointInfo:
    """A checkpoint the engine wrote; passed to :meth:`Reporter.save_checkpoint`.

    ``directory`` holds ``adapter_config.json`` + ``adapter_model.safetensors`` (PEFT layout,
    loadable by ``PeftModel.from_pretrained``) and the training state (``training_state.json``,
    ``training_state.pt``: optimizer, scheduler, RNG states, data position, token counters,
    metrics so far). Passing a local copy of it as ``resume_from`` continues the run.
    """

    step: int
    total_steps: int
    epoch: int
    directory: Path
    metrics: dict[str, float | None]
    reason: CheckpointReason


class Reporter(Protocol):
    """How the engine talks back to the platform while it trains."""

    def metrics(
        self,
        step: int,
        total_steps: int,
        train_loss: float,
        train_mean_token_accuracy: float,
        *,
        valid_loss: float | None = None,
        valid_mean_token_accuracy: float | None = None,
        full_valid_loss: float | None = None,
        full_valid_mean_token_accuracy: float | None = None,
        tokens_per_second: float | None = None,
        extra: Mapping[str, float | None] | None = None,
    ) -> None:
        """Metrics of 1-based optimizer ``step``; ``valid_*`` only where a validation ran.

        ``extra`` (DPO runs only, never passed otherwise) holds the DPO quantities:
        ``{train,valid,full_valid}_{chosen_reward,rejected_reward,reward_margin,
        preference_accuracy}``; ``train_loss`` is then the DPO loss and
        ``train_mean_token_accuracy`` the preference accuracy."""
        ...

    def message(self, text: str, level: str = "info") -> None: ...

    def should_stop(self) -> bool:
        """True when the job was cancelled: the engine stops before its next step."""
        ...

    def should_pause(self) -> bool:
        """True when the job should pause: the engine checkpoints, then raises."""
        ...

    def save_checkpoint(self, info: CheckpointInfo) -> None:
        """Persist ``info.directory``; the engine may delete it once this returns."""
        ...


class TrainingStopped(Exception):
    """Raised by the engine when ``Reporter.should_stop()`` turned true; nothing is saved."""


class TrainingPaused(Exception):
    """Raised after a pause checkpoint was handed to ``Reporter.save_checkpoint``."""

    def __init__(self, step: int, message: str | None = None) -> None:
        super().__init__(message or f"paused after step {step}")
        self.step = step

    def __reduce__(self) -> tuple[type[TrainingPaused], tuple[int, str]]:
        # Keeps ``step`` across pickling (e.g. from a data-parallel rank to its launcher).
        return (TrainingPaused, (self.step, str(self)))


class TrainingProcessLost(RuntimeError):
    """A training process (a rank of a multi-process run, or a single isolated one) died
    without reporting (killed, crashed, lost its device); the run stops, and the job may be
    retried from its last checkpoint, unless the kernel's OOM killer ended it."""

    def __init__(self, message: str, exit_code: int | None = None) -> None:
        super().__init__(message)
        self.exit_code = exit_code  # negative: killed by that signal (-9: SIGKILL)

    def __reduce__(self) -> tuple[type[TrainingProcessLost], tuple[str, int | None]]:
        return (TrainingProcessLost, (str(self), self.exit_code))
