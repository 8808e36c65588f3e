"""The ``validating_files`` step: tokenize a job's files with its base model's tokenizer, exactly
as training will, so the job shows real token counts (and truncation) before it queues.

A validation message is a wake-up: the validator leases the fairest waiting job
(core.scheduling.validation), not necessarily the one named, and has
``DORADO_VALIDATION_TIMEOUT_SECONDS`` to finish it. The file is checked line by line first
(the upload caps, in bounded memory), then tokenized in time linear in its length.
"""

from __future__ import annotations

import logging
import os
import socket
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import select

from core.db.engine import session_scope
from core.db.models import File, Job
from core.jobs import lifecycle as jobs
from core.jobs.status import FailureCode, JobStatus
from core.scheduling.validation import claim_next_validation
from core.scheduling.wakeups import commit_and_publish
from core.settings import Settings
from core.storage.datasets import DatasetLimits, check_format_for_method, validate_stream
from core.storage.objects import ObjectNotFound, open_store
from worker.failures import TRANSIENT_CODES, classify
from worker.model_files import ensure_tokenizer_files
from worker.model_store import ModelUnavailable

log = logging.getLogger(__name__)

DEFAULT_MAX_SEQ_LENGTH = 2048
# transformers resolves its lazy top-level names without a lock: two validations starting at
# once in the validator's threads pool failed with "cannot import name 'AutoConfig'".
_TRANSFORMERS_IMPORT = threading.Lock()


def auto_classes() -> tuple[Any, Any]:
    """transformers' ``AutoConfig`` and ``AutoTokenizer``, imported safely from any thread."""
    with _TRANSFORMERS_IMPORT:
        from transformers import AutoConfig, AutoTokenizer
    return AutoConfig, AutoTokenizer


class ValidationTimeout(Exception):
    """The job's files took longer than the validation time budget."""


def validator_name() -> str:
    """``host:pid:thread``: a validator runs several threads, each holding its own lease."""
    return f"{socket.gethostname()}:{os.getpid()}:{threading.get_ident()}"


def _before(deadline: float, conversations: Iterable[Any], budget: float) -> Iterator[Any]:
    for conversation in conversations:
        if time.monotonic() > deadline:
            raise ValidationTimeout(
                f"validating the files took longer than {budget:.0f} s "
                "(DORADO_VALIDATION_TIMEOUT_SECONDS); split the file or shorten its examples"
            )
        yield conversation


def file_stats(
    path: Path,
    tokenizer,
    max_seq_length: int,
    *,
    limits: DatasetLimits = DatasetLimits(),
    deadline: float = float("inf"),
    budget: float = 0.0,
    method: str = "supervised",
) -> dict[str, int]:
    """Examples, tokens and truncations of one file, tokenized as the engine does (a ``dpo``
    job's file as preference pairs: both replies' tokens count).

    Raises:
        ValueError: a line breaks the upload rules (a file stored before a cap was lowered),
            the file's format does not fit ``method``, or a line cannot be tokenized, naming it.
        ValidationTimeout: ``deadline`` (``time.monotonic()``) passed.
    """
    from worker.training.data import read_jsonl, tokenize_dataset

    with path.open("rb") as handle:
        report = validate_stream(handle, limits)
    if not report.ok:
        raise ValueError(report.summary())
    mismatch = check_format_for_method(report.format, method)
    if mismatch:
        raise ValueError(mismatch)
    if method == "dpo":
        return _preference_stats(path, tokenizer, max_seq_length, deadline, budget)
    dataset = tokenize_dataset(
        tokenizer, _before(deadline, read_jsonl(path), budget), max_seq_length
    )
    if not dataset.examples:
        raise ValueError("no example has any assistant token to train on")
    return {
        "examples": len(dataset.examples),
        "tokens": sum(len(e) for e in dataset.examples),
        "trainable_tokens": sum(e.n_loss_tokens for e in dataset.examples),
        "truncated_examples": dataset.n_truncated,
        "dropped_examples": dataset.n_dropped_no_loss,
        "max_seq_length": dataset.max_seq_length,
    }


def _preference_stats(
    path: Path, tokenizer, max_seq_length: int, deadline: float, budget: float
) -> dict[str, int]:
    from worker.training.dpo import read_preference_jsonl, tokenize_pairs

    pairs = tokenize_pairs(
        tokenizer, _before(deadline, read_preference_jsonl(path), budget), max_seq_length
    )
    if not pairs.examples:
        raise ValueError("no preference pair has reply tokens to compare")
    return {
        "examples": len(pairs.examples),
        "tokens": sum(len(p) for p in pairs.examples),
        "trainable_tokens": sum(
            p.chosen.n_loss_tokens + p.rejected.n_loss_tokens for p in pairs.examples
        ),
        "truncated_examples": pairs.n_truncated,
        "dropped_examples": pairs.n_dropped_no_loss,
        "max_seq_length": pairs.max_seq_length,
    }


def validate(settings: Settings, job_id: str) -> None:
    """A wake-up for the validators (sent for ``job_id``): lease the fairest waiting job and
    validate it; nothing when no job waits or all are leased."""
    name = validator_name()
    with session_scope(settings.database_url) as session:
        claimed = claim_next_validation(
            session,
            validator=name,
            lease_seconds=settings.validation_timeout_seconds + settings.lease_seconds,
            max_retries=settings.max_job_retries,
        )
    if claimed is None:
        log.info("wake-up for job %s: no job waits for validation", job_id)
        return
    try:
        validate_claimed(settings, claimed, name)
    except BaseException as exc:
        # Never leave a job leased to a validator that stopped working on it: it would wait
        # for the whole lease (the time budget) before another validator may take it.
        _give_back(settings, claimed, name, exc)
        raise


def _give_back(settings: Settings, job_id: str, validator: str, exc: BaseException) -> None:
    message = f"the validator stopped: {type(exc).__name__}: {exc}"
    try:
        with session_scope(settings.database_url) as session:
            if not jobs.retry_validation(
                session,
                job_id,
                code=FailureCode.INTERNAL_ERROR,
                message=message,
                max_retries=settings.max_job_retries,
                validator=validator,
            ):
                jobs.fail_validation(
                    session, job_id, message, None, code=FailureCode.INTERNAL_ERROR
                )
    except Exception:  # the database is gone too: the lease expires and the job is taken over
        log.warning("job %s: could not give the validation lease back", job_id, exc_info=True)


def validate_claimed(settings: Settings, job_id: str, validator: str) -> None:
    """Validate a job leased to ``validator`` and queue it for training (or fail it)."""
    AutoConfig, AutoTokenizer = auto_classes()
    budget = float(settings.validation_timeout_seconds)
    deadline = time.monotonic() + budget
    with session_scope(settings.database_url) as session:
        job = session.get(Job, job_id)
        if job is None or job.status != JobStatus.VALIDATING_FILES:
            return
        files = {"training_file": session.get(File, job.training_file)}
        if job.validation_file:
            files["validation_file"] = session.get(File, job.validation_file)
        model, options, n_epochs, method = (
            job.model,
            dict(job.options or {}),
            int(job.hyperparameters["n_epochs"]),
            (job.method or {}).get("type", "supervised"),
        )
        keys = {param: (row.storage_key if row else None) for param, row in files.items()}
    store = open_store(settings)
    limits = DatasetLimits.from_settings(settings)
    stats: dict[str, Any] = {}
    try:
        base_dir = ensure_tokenizer_files(settings, store, model)  # no weights needed
        tokenizer = AutoTokenizer.from_pretrained(base_dir)
        limit = options.get("max_seq_length") or min(
            DEFAULT_MAX_SEQ_LENGTH,
            getattr(AutoConfig.from_pretrained(base_dir), "max_position_embeddings", None)
            or DEFAULT_MAX_SEQ_LENGTH,
        )
        with tempfile.TemporaryDirectory(prefix=f"dorado-validate-{job_id}-") as tmp:
            for param, key in keys.items():
                if key is None:
                    raise ObjectNotFound(param)
                path = Path(tmp) / f"{param}.jsonl"
                try:
                    store.download_file(key, path)
                    found = file_stats(
                        path,
                        tokenizer,
                        int(limit),
                        limits=limits,
                        deadline=deadline,
                        budget=budget,
                        method=method,
                    )
                except ValueError as exc:
                    _fail(settings, job_id, f"{param.replace('_', ' ')}: {exc}", param)
                    return
                stats[param] = found
    except ValidationTimeout as exc:
        _fail(settings, job_id, str(exc), "training_file", code=FailureCode.VALIDATION_TIMEOUT)
        return
    except ObjectNotFound as exc:
        _fail(settings, job_id, f"a file of this job no longer exists ({exc})", "training_file")
        return
    except ModelUnavailable as exc:
        _fail(settings, job_id, str(exc), "model")
        return
    except Exception as exc:
        code, message, blamed = classify(exc)
        log.warning("job %s: validation error %s: %s", job_id, code, message)
        with session_scope(settings.database_url) as session:
            if code in TRANSIENT_CODES and jobs.retry_validation(
                session,
                job_id,
                code=code,
                message=message,
                max_retries=settings.max_job_retries,
                validator=validator,
            ):
                return
            jobs.fail_validation(session, job_id, message, blamed, code=code)
        return
    training = stats["training_file"]
    summary = {
        **training,
        "billable_tokens": training["tokens"] * n_epochs,
        **({"validation_file": stats["validation_file"]} if "validation_file" in stats else {}),
    }
    with session_scope(settings.database_url) as session:
        moved = jobs.finish_validation(session, job_id, summary)
        if moved:  # queued now: wake a training worker of its pool
            queued = session.scalars(select(Job).where(Job.id == job_id)).all()
            commit_and_publish(session, settings, queued)
    if moved:
        log.info(
            "job %s: validated (%s examples, %s tokens)",
            job_id,
            training["examples"],
            training["tokens"],
        )


def _fail(
    settings: Settings,
    job_id: str,
    message: str,
    param: str,
    code: FailureCode = FailureCode.INVALID_TRAINING_FILE,
) -> None:
    log.info("job %s: validation failed: %s", job_id, message)
    with session_scope(settings.database_url) as session:
        jobs.fail_validation(session, job_id, message, param, code=code)
