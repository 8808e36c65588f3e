"""Helpers shared by the worker tests."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from worker.training.spec import CheckpointInfo

ROOT = Path(__file__).resolve().parents[2]
PIRATE = ROOT / "examples" / "pirate.jsonl"
PLAIN = "I am not sure, but I think it is something I cannot answer well."


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


def preference_rows(n: int, start: int = 0) -> list[dict]:
    """Pirate replies preferred over a plain non-answer, prompts from examples/pirate.jsonl."""
    rows = []
    for line in PIRATE.read_text(encoding="utf-8").splitlines()[start : start + n]:
        messages = json.loads(line)["messages"]
        rows.append(
            {
                "input": {"messages": messages[:-1]},
                "preferred_output": [messages[-1]],
                "non_preferred_output": [{"role": "assistant", "content": PLAIN}],
            }
        )
    return rows


def assert_same_adapter(a: Path, b: Path, *, rtol: float = 1e-3, atol: float = 1e-4) -> None:
    """The adapters saved in directories ``a`` and ``b`` (a result's ``adapter_dir``, a
    checkpoint) hold the same tensors within float rounding, and training moved them. The
    default tolerances allow other micro-batches (Adam magnifies their rounding on near-zero
    gradients); the same ranks on the same data may ask for tighter ones."""
    # Imported here: most users of these helpers never load an adapter.
    import torch
    from safetensors.torch import load_file

    first = load_file(a / "adapter_model.safetensors")
    second = load_file(b / "adapter_model.safetensors")
    assert first.keys() == second.keys()
    for key in first:
        torch.testing.assert_close(first[key], second[key], rtol=rtol, atol=atol)
    # The comparison is not between two untouched initialisations.
    assert any(torch.count_nonzero(first[k]) for k in first if "lora_B" in k)


@dataclass
class RecordingReporter:
    """A Reporter that records everything.

    It cancels once ``stop_after`` steps have run, and asks for a pause once ``pause_after``
    steps have run. Checkpoints are copied to ``checkpoint_root/step-N-reason`` (when given),
    since the engine deletes them after ``save_checkpoint`` returns.
    """

    stop_after: int | None = None
    pause_after: int | None = None
    checkpoint_root: Path | None = None
    metrics_calls: list[tuple[int, int, float, float]] = field(default_factory=list)
    metrics_extra: list[dict] = field(default_factory=list)
    messages: list[tuple[str, str]] = field(default_factory=list)
    checkpoints: list[CheckpointInfo] = field(default_factory=list)
    checkpoint_copies: list[Path] = field(default_factory=list)
    stop_checks: int = 0
    pause_checks: int = 0

    def metrics(
        self,
        step: int,
        total_steps: int,
        train_loss: float,
        train_mean_token_accuracy: float,
        **extra: float | None,
    ) -> None:
        self.metrics_calls.append((step, total_steps, train_loss, train_mean_token_accuracy))
        self.metrics_extra.append({"step": step, **extra})

    def message(self, text: str, level: str = "info") -> None:
        self.messages.append((level, text))

    def should_stop(self) -> bool:
        self.stop_checks += 1
        return self.stop_after is not None and self.stop_checks > self.stop_after

    def should_pause(self) -> bool:
        self.pause_checks += 1
        return self.pause_after is not None and self.pause_checks > self.pause_after

    def save_checkpoint(self, info: CheckpointInfo) -> None:
        assert info.directory.is_dir()
        self.checkpoints.append(info)
        if self.checkpoint_root is not None:
            dest = self.checkpoint_root / f"step-{info.step}-{info.reason}"
            shutil.copytree(info.directory, dest)
            self.checkpoint_copies.append(dest)

    @property
    def losses(self) -> list[float]:
        return [m[2] for m in self.metrics_calls]


@dataclass
class RankKillingReporter(RecordingReporter):
    """Kills rank process ``rank`` of a data-parallel run (SIGKILL) once ``after`` steps ran.

    It lives in the launcher's process, as the worker's reporter does, so the rank processes
    are its children.
    """

    rank: int = 1
    after: int = 2
    killed: int | None = None

    def should_stop(self) -> bool:
        import multiprocessing
        import os
        import signal

        if self.killed is None and len(self.metrics_calls) >= self.after:
            for child in multiprocessing.active_children():
                if child.name == f"dorado-rank-{self.rank}":
                    os.kill(child.pid, signal.SIGKILL)
                    self.killed = child.pid
        return super().should_stop()
