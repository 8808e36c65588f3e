"""Train one job on several devices of one worker with ``torch.distributed``.

:func:`train_data_parallel` starts ``world_size`` processes, joins them into a process group
(NCCL on CUDA, one GPU per rank; gloo on CPU) and runs :func:`worker.training.recipe.train` in
each. The recipe sees the group (``worker.training.parallel``): every rank trains on its share of
every batch, gradients are summed across ranks, and rank 0 alone talks to the reporter, writes
checkpoints and saves the adapter. The result equals a single-process run of the same global
batch up to float rounding.

The reporter is built inside rank 0 by ``reporter_factory`` (a picklable callable): a reporter
holds connections that cannot cross a process boundary.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.multiprocessing as mp

from worker.training.spec import CheckpointInfo, Reporter, TrainResult, TrainSpec


class SilentReporter:
    """The reporter of ranks other than 0 (never consulted by the recipe; a safe default)."""

    def metrics(self, *args: Any, **kwargs: Any) -> None:
        """Ignore metrics."""

    def message(self, text: str, level: str = "info") -> None:
        """Ignore messages."""

    def should_stop(self) -> bool:
        """Never stop on its own (rank 0 decides for all)."""
        return False

    def should_pause(self) -> bool:
        """Never pause on its own (rank 0 decides for all)."""
        return False

    def save_checkpoint(self, info: CheckpointInfo) -> None:
        """Ignore checkpoints."""


def free_port() -> int:
    """A TCP port on localhost that is free right now, for the group's rendezvous."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def default_backend() -> str:
    """NCCL when CUDA is available, else gloo."""
    return "nccl" if torch.cuda.is_available() else "gloo"


def _worker(
    rank: int,
    world_size: int,
    port: int,
    backend: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    reporter_factory: Callable[[], Reporter],
    results: Any,
) -> None:
    import torch.distributed as dist

    from worker.training.recipe import train

    if backend == "gloo":
        # The ranks share the machine's cores; more threads than cores each only thrash.
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world_size))
    dist.init_process_group(
        backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size
    )
    try:
        reporter = reporter_factory() if rank == 0 else SilentReporter()
        result = train(*args, reporter, **kwargs)
        if rank == 0:
            results.put(("ok", result))
    except BaseException as exc:
        if rank == 0:
            results.put(("error", exc))
        raise
    finally:
        dist.destroy_process_group()


def train_data_parallel(
    world_size: int,
    spec: TrainSpec,
    base_model_dir: Path,
    training_file: Path,
    output_dir: Path,
    reporter_factory: Callable[[], Reporter],
    *,
    validation_file: Path | None = None,
    resume_from: Path | None = None,
    backend: str | None = None,
) -> TrainResult:
    """Run :func:`~worker.training.recipe.train` on ``world_size`` processes; rank 0's result.

    Raises whatever rank 0's ``train`` raised (``TrainingStopped``, ``TrainingPaused``, ...),
    or ``RuntimeError`` when another rank failed.
    """
    if world_size < 1:
        raise ValueError("world_size must be >= 1")
    backend = backend or default_backend()
    ctx = mp.get_context("spawn")
    results = ctx.SimpleQueue()
    args = (spec, Path(base_model_dir), Path(training_file), Path(output_dir))
    kwargs = {"validation_file": validation_file, "resume_from": resume_from}
    try:
        mp.start_processes(
            _worker,
            args=(world_size, free_port(), backend, args, kwargs, reporter_factory, results),
            nprocs=world_size,
            join=True,
            start_method="spawn",
        )
    except mp.ProcessRaisedException as exc:
        if not results.empty():
            status, value = results.get()
            if status == "error":
                raise value from exc
        raise RuntimeError(f"a training process failed: {exc}") from exc
    status, value = results.get()
    if status == "error":
        raise value
    return value
