"""The frozen description of one training run, built by the task from a Job row.

The training engine depends only on this module, never on the database or the API.
"""

from __future__ import annotations

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
class TrainSpec:
    """Resolved hyperparameters (no "auto" left) for one run.

    ``checkpoint_every_n_steps`` adds checkpoints between the ones written at every epoch end;
    ``eval_every_n_steps`` is how often the sampled validation runs (``None``: about ten times
    per run); ``gradient_checkpointing`` trades compute for activation memory.
    ``learning_rate`` is the final, absolute rate (the caller applies any multiplier or
    override); ``options`` holds the engine's other knobs (:class:`EngineOptions`).
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
    ) -> None:
        """Metrics of 1-based optimizer ``step``; ``valid_*`` only where a validation ran."""
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
    """A process of a multi-process run died without reporting (killed, crashed, lost its
    device); the run stops, and the job may be retried from its last checkpoint."""

    def __init__(self, message: str, exit_code: int | None = None) -> None:
        super().__init__(message)
        self.exit_code = exit_code  # negative: killed by that signal (-9: SIGKILL)

    def __reduce__(self) -> tuple[type[TrainingProcessLost], tuple[str, int | None]]:
        return (TrainingProcessLost, (str(self), self.exit_code))
