"""A job's status and the codes of its failures: the one list every layer reads.

Both enums are ``str``-valued, so they compare equal to, serialize as and are stored as the
plain strings of the wire format (``JobStatus.QUEUED == "queued"``). The dashboard receives
them (with the help text of each failure code) from the page that serves it, never a copy.
"""

from __future__ import annotations

from enum import Enum


class JobStatus(str, Enum):
    """The ``status`` of a fine-tuning job, as OpenAI's API names them (plus ``paused``)."""

    VALIDATING_FILES = "validating_files"
    QUEUED = "queued"
    RUNNING = "running"
    PAUSED = "paused"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    def __str__(self) -> str:
        return self.value


ALL_STATUSES: tuple[JobStatus, ...] = tuple(JobStatus)
#: Waiting for or holding a worker.
ACTIVE_STATUSES: tuple[JobStatus, ...] = (
    JobStatus.VALIDATING_FILES,
    JobStatus.QUEUED,
    JobStatus.RUNNING,
)
#: Counted against ``max_queued_jobs``.
WAITING_STATUSES: tuple[JobStatus, ...] = (JobStatus.VALIDATING_FILES, JobStatus.QUEUED)
#: A job in one of these never changes again.
FINAL_STATUSES: tuple[JobStatus, ...] = (
    JobStatus.SUCCEEDED,
    JobStatus.FAILED,
    JobStatus.CANCELLED,
)
#: Not final: may still run (a paused job may be resumed).
NON_FINAL_STATUSES: tuple[JobStatus, ...] = (*ACTIVE_STATUSES, JobStatus.PAUSED)


class FailureCode(str, Enum):
    """``error.code`` of a failed job: every code a job can end with, and nothing else.

    Produced by the validator (``worker.validation``: a bad file, or an error classified by
    ``worker.failures.classify``), the training worker (``worker.tasks``, ``classify`` again)
    and the sweeper (a worker lost more often than retries allow).
    """

    INVALID_TRAINING_FILE = "invalid_training_file"
    FILE_MISSING = "file_missing"
    MODEL_UNAVAILABLE = "model_unavailable"
    OUT_OF_MEMORY = "out_of_memory"
    TRAINING_DIVERGED = "training_diverged"
    INVALID_ADAPTER = "invalid_adapter"
    INVALID_TRAINING_DATA = "invalid_training_data"
    STORAGE_UNAVAILABLE = "storage_unavailable"
    DATABASE_UNAVAILABLE = "database_unavailable"
    TRAINING_PROCESS_LOST = "training_process_lost"
    WORKER_LOST = "worker_lost"
    MAX_RUN_TIME_EXCEEDED = "max_run_time_exceeded"
    VALIDATION_TIMEOUT = "validation_timeout"
    INTERNAL_ERROR = "internal_error"

    def __str__(self) -> str:
        return self.value


#: What a user can do about each failure, shown next to the error's own message.
FAILURE_HELP: dict[FailureCode, str] = {
    FailureCode.INVALID_TRAINING_FILE: "A training or validation file failed validation.",
    FailureCode.FILE_MISSING: (
        "A file the job needs was deleted before training read it. Upload it again and start "
        "a new job."
    ),
    FailureCode.MODEL_UNAVAILABLE: "The base model could not be loaded on the worker.",
    FailureCode.OUT_OF_MEMORY: (
        "The job ran out of memory. Try shorter examples (max_seq_length), gradient "
        'checkpointing, a quantized model (adapter.quantization "nf4") or larger GPUs.'
    ),
    FailureCode.TRAINING_DIVERGED: (
        "The loss became NaN or infinite. Try a lower learning rate multiplier."
    ),
    FailureCode.INVALID_ADAPTER: (
        "The adapter settings do not fit this model (check target modules)."
    ),
    FailureCode.INVALID_TRAINING_DATA: "The training data could not be used as given.",
    FailureCode.STORAGE_UNAVAILABLE: (
        "The object store kept failing after retries. The job may be retried once it is back."
    ),
    FailureCode.DATABASE_UNAVAILABLE: "The database was unreachable from the worker.",
    FailureCode.TRAINING_PROCESS_LOST: (
        "A training process was lost (killed or crashed) more times than retries allow."
    ),
    FailureCode.WORKER_LOST: (
        "The worker running the job stopped responding more times than retries allow."
    ),
    FailureCode.MAX_RUN_TIME_EXCEEDED: (
        "The job ran longer than its time limit. Ask for fewer epochs or a higher limit."
    ),
    FailureCode.VALIDATION_TIMEOUT: (
        "Checking the files took longer than the validation time budget. Split the file or "
        "shorten its longest examples."
    ),
    FailureCode.INTERNAL_ERROR: (
        "The worker hit an unexpected error. The message below has the details."
    ),
}
