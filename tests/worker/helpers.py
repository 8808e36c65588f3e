"""Helpers shared by the worker tests."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PIRATE = ROOT / "examples" / "pirate.jsonl"


def chat(user: str, reply: str, **reply_extra: object) -> dict:
    """One user turn and one assistant reply as a JSONL object."""
    return {
        "messages": [
            {"role": "user", "content": user},
            {"role": "assistant", "content": reply, **reply_extra},
        ]
    }


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@dataclass
class RecordingReporter:
    """A Reporter that records everything and stops once ``stop_after`` steps have run."""

    stop_after: int | None = None
    metrics_calls: list[tuple[int, int, float, float]] = field(default_factory=list)
    messages: list[tuple[str, str]] = field(default_factory=list)
    stop_checks: int = 0

    def metrics(
        self, step: int, total_steps: int, train_loss: float, train_mean_token_accuracy: float
    ) -> None:
        self.metrics_calls.append((step, total_steps, train_loss, train_mean_token_accuracy))

    def message(self, text: str, level: str = "info") -> None:
        self.messages.append((level, text))

    def should_stop(self) -> bool:
        self.stop_checks += 1
        return self.stop_after is not None and self.stop_checks > self.stop_after

    @property
    def losses(self) -> list[float]:
        return [m[2] for m in self.metrics_calls]
