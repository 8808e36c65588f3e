"""What the hub asks of a tracker, and what it tells it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class RunInfo:
    """A job as a tracker's run: its id, a display name and the parameters to record."""

    job_id: str
    name: str
    params: dict[str, Any]
    tags: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Outcome:
    """How the job ended, and where its adapter is (None while not succeeded)."""

    status: str
    fine_tuned_model: str | None = None
    adapter_uri: str | None = None
    trained_tokens: int | None = None

    @property
    def succeeded(self) -> bool:
        return self.status == "succeeded"


class Tracker(Protocol):
    """One tracker's run. Each method may raise (the hub retries it, then gives up)."""

    label: str

    def start(self, run: RunInfo) -> None: ...

    def log_metrics(self, step: int, metrics: dict[str, float]) -> None: ...

    def finish(self, outcome: Outcome) -> None: ...


def flatten(params: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"adapter": {"r": 8}}`` as ``{"adapter.r": 8}`` (trackers show flat parameters)."""
    out: dict[str, Any] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        elif value is not None:
            out[name] = value
    return out
