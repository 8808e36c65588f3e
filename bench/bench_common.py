"""Helpers shared by the benchmarks: the model, data sets, a timing reporter, evaluation."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from worker.training.spec import CheckpointInfo  # noqa: E402


def smollm2_dir() -> Path:
    """SmolLM2-135M-Instruct in HF format (the tests' cache, built on first use)."""
    from worker.model_builders import build_builtin
    from worker.model_store import COMPLETE_MARKER

    dest = ROOT / ".dorado-test" / "models" / "smollm2-135m-instruct"
    if not (dest / COMPLETE_MARKER).exists():
        build_builtin("smollm2-135m-instruct", dest)
        (dest / COMPLETE_MARKER).touch()
    return dest


@dataclass
class TimingReporter:
    """A Reporter that times the training steps: from the first control check to the last
    metrics call (model loading, tokenisation and checkpoints excluded)."""

    started: float | None = None
    ended: float | None = None
    losses: list[float] = field(default_factory=list)
    steps: int = 0

    def metrics(self, step: int, total_steps: int, train_loss: float, *args, **kw) -> None:
        self.ended = time.perf_counter()
        self.losses.append(train_loss)
        self.steps = step

    def message(self, text: str, level: str = "info") -> None:
        print(f"  [{level}] {text}", flush=True)

    def should_stop(self) -> bool:
        if self.started is None:
            self.started = time.perf_counter()
        return False

    def should_pause(self) -> bool:
        return False

    def save_checkpoint(self, info: CheckpointInfo) -> None:
        pass

    @property
    def seconds(self) -> float:
        assert self.started is not None and self.ended is not None
        return self.ended - self.started


def heldout_metrics(model: torch.nn.Module, examples, pad_id: int) -> tuple[float, float]:
    """Token-weighted loss and accuracy with the engine's own evaluation."""
    from worker.training.recipe import evaluate

    stats = evaluate(model, examples, pad_id, torch.device("cpu"))
    return stats.loss, stats.accuracy
