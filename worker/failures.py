"""Failures of a job on a worker, classified into a code, a human message and the request
parameter to blame; transient ones are retried (bounded), user errors never."""

from __future__ import annotations

from core.jobs.status import FailureCode
from core.storage.objects import ObjectNotFound
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


def classify(exc: BaseException) -> tuple[FailureCode, str, str | None]:
    """(code, human message, param) for a failed run."""
    if isinstance(exc, TrainingProcessLost):
        return FailureCode.TRAINING_PROCESS_LOST, f"A training process was lost: {exc}", None
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
    if type(exc).__name__ == "OutOfMemoryError" or isinstance(exc, MemoryError):
        return (
            FailureCode.OUT_OF_MEMORY,
            "The worker ran out of memory; try a smaller batch_size or max_seq_length",
            "hyperparameters.batch_size",
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
