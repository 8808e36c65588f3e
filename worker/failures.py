"""Failures of a job on a worker, classified into a code, a human message and the request
parameter to blame; transient ones are retried (bounded), user errors never."""

from __future__ import annotations

import re
import signal

from core.jobs.status import FailureCode
from core.storage.objects import ObjectNotFound
from worker import oom
from worker.model_store import ModelUnavailable
from worker.training.spec import TrainingProcessLost

# Errors that may pass by themselves: retried (bounded). User errors never are.
TRANSIENT_CODES = frozenset(
    {
        FailureCode.STORAGE_UNAVAILABLE,
        FailureCode.DATABASE_UNAVAILABLE,
        FailureCode.TRAINING_PROCESS_LOST,
    }
)


# What to change when a job runs out of memory, in the order that costs the least.
OOM_ADVICE = (
    "lower max_seq_length or training.micro_batch_tokens, set "
    "training.gradient_checkpointing to true, quantize the base model "
    '(adapter.quantization "nf4"), or run it on larger GPUs (a pool with more memory) or more '
    "of them"
)
# How allocators say they failed: torch's CPU allocator raises a plain RuntimeError
# ("DefaultCPUAllocator: can't allocate memory"), CUDA's an OutOfMemoryError (a RuntimeError)
# or, from cuBLAS and friends, a RuntimeError naming CUDA_ERROR_OUT_OF_MEMORY.
_ALLOCATION_FAILED = re.compile(
    r"can't allocate memory|out of memory|CUDA_ERROR_OUT_OF_MEMORY|CUBLAS_STATUS_ALLOC_FAILED",
    re.IGNORECASE,
)

OOM_COUNTER = oom.find_counter()
"""Where this worker reads the kernel's OOM kills (see worker.oom); None: nowhere."""


def oom_kills() -> int | None:
    """The kernel's OOM kill count for this worker now, None where it cannot be read."""
    return OOM_COUNTER.read() if OOM_COUNTER is not None else None


OOM_KILLS_AT_START = oom_kills()
"""The count when this worker started: the baseline of a run that did not read its own."""


def is_allocation_failure(exc: BaseException) -> bool:
    """An allocator (CPU or GPU) could not get memory."""
    if type(exc).__name__ == "OutOfMemoryError" or isinstance(exc, MemoryError):
        return True
    return isinstance(exc, RuntimeError) and bool(_ALLOCATION_FAILED.search(str(exc)))


def host_oom_killed(
    exc: TrainingProcessLost, kills_before: int | None, kills_now: int | None = None
) -> bool | None:
    """Whether a lost training process was killed by the kernel's OOM killer: True when it
    died of SIGKILL and the kernel counted an OOM kill since ``kills_before`` (read before the
    run started), False when it did not die of SIGKILL or no kill was counted, None when
    SIGKILL is all that is known (the counter is not readable here)."""
    if exc.exit_code != -signal.SIGKILL:
        return False
    now = oom_kills() if kills_now is None else kills_now
    if now is None or kills_before is None:
        return None
    return now > kills_before


def classify(
    exc: BaseException, oom_kills_before: int | None = OOM_KILLS_AT_START
) -> tuple[FailureCode, str, str | None]:
    """(code, human message, param) for a failed run; ``oom_kills_before`` is the kernel's
    OOM kill count (:func:`oom_kills`) when the run started (default: when the worker did)."""
    if isinstance(exc, TrainingProcessLost):
        killed = host_oom_killed(exc, oom_kills_before)
        if killed:
            counted_by = (
                "the host's kernel (its memory cgroup is not readable here)"
                if OOM_COUNTER is not None and OOM_COUNTER.scope == oom.HOST
                else "the worker's memory cgroup"
            )
            return (
                FailureCode.OUT_OF_MEMORY,
                "The worker ran out of memory: the kernel's OOM killer ended the training "
                f"process (SIGKILL, an OOM kill counted by {counted_by}); {OOM_ADVICE}",
                "max_seq_length",
            )
        hint = (
            " SIGKILL is how the kernel ends a process that runs the host out of memory; "
            f"if this recurs, {OOM_ADVICE}"
            if killed is None
            else ""
        )
        return FailureCode.TRAINING_PROCESS_LOST, f"A training process was lost: {exc}.{hint}", None
    if isinstance(exc, ObjectNotFound):
        return (
            FailureCode.FILE_MISSING,
            f"A stored file is missing (deleted?): {exc}",
            "training_file",
        )
    if _is_storage_error(exc):
        return (
            FailureCode.STORAGE_UNAVAILABLE,
            f"The object store kept failing after retries: {type(exc).__name__}: {exc}",
            None,
        )
    if type(exc).__name__ in ("OperationalError", "DisconnectionError"):
        return FailureCode.DATABASE_UNAVAILABLE, f"The database was unreachable: {exc}", None
    if isinstance(exc, ModelUnavailable):
        return FailureCode.MODEL_UNAVAILABLE, str(exc), "model"
    if is_allocation_failure(exc):
        where = "GPU" if "cuda" in str(exc).lower() else "worker"
        return (
            FailureCode.OUT_OF_MEMORY,
            f"The {where} ran out of memory ({type(exc).__name__}: {_first_line(exc)}); "
            f"{OOM_ADVICE}",
            "max_seq_length",
        )
    if isinstance(exc, FloatingPointError):
        return (
            FailureCode.TRAINING_DIVERGED,
            f"Training diverged ({exc}); try a lower learning_rate_multiplier",
            "hyperparameters.learning_rate_multiplier",
        )
    if isinstance(exc, ValueError) and "target module" in str(exc).lower():
        return (
            FailureCode.INVALID_ADAPTER,
            f"Invalid adapter settings: {exc}",
            "adapter.target_modules",
        )
    if isinstance(exc, ValueError):
        return FailureCode.INVALID_TRAINING_DATA, f"Training data problem: {exc}", "training_file"
    return (
        FailureCode.INTERNAL_ERROR,
        f"Training failed on the worker: {type(exc).__name__}: {exc}",
        None,
    )


def _is_storage_error(exc: BaseException) -> bool:
    try:
        from botocore.exceptions import BotoCoreError, ClientError
    except ImportError:  # pragma: no cover - boto3 is a core dependency
        return False
    return isinstance(exc, (BotoCoreError, ClientError))


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [""])[0][:200]
