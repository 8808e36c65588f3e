"""The frozen description of one training run, built by the task from a Job row.

The training engine depends only on this module, never on the database or the API.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol


@dataclass(frozen=True)
class AdapterSpec:
    """Which PEFT adapter to train. ``type == "dora"`` sets ``use_dora=True``."""

    type: Literal["lora", "dora"] = "dora"
    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    target_modules: str | tuple[str, ...] = "all-linear"


@dataclass(frozen=True)
class TrainSpec:
    """Resolved hyperparameters (no "auto" left) for one run."""

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
    extra: dict[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class TrainResult:
    """What a finished run produced. ``adapter_dir`` holds a PEFT adapter."""

    adapter_dir: Path
    steps: int
    trained_tokens: int
    final_train_loss: float | None


class Reporter(Protocol):
    """How the engine talks back to the platform while it trains."""

    def metrics(self, step: int, total_steps: int, train_loss: float,
                train_mean_token_accuracy: float) -> None: ...

    def message(self, text: str, level: str = "info") -> None: ...

    def should_stop(self) -> bool:
        """True when the job was cancelled: the engine stops before its next step."""
        ...


class TrainingStopped(Exception):
    """Raised by the engine when ``Reporter.should_stop()`` turned true."""
