"""The ``validating_files`` step: tokenize a job's files with its base model's tokenizer, exactly
as training will, so the job shows real token counts (and truncation) before it queues."""

from __future__ import annotations

import logging
import tempfile
import threading
from pathlib import Path
from typing import Any

from sqlalchemy import select

from core.db.engine import session_scope
from core.db.models import File, Job
from core.jobs import lifecycle as jobs
from core.jobs.status import JobStatus
from core.scheduling.wakeups import commit_and_publish
from core.settings import Settings
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


def file_stats(path: Path, tokenizer, max_seq_length: int) -> dict[str, int]:
    """Examples, tokens and truncations of one file, tokenized as the engine does."""
    from worker.training.data import load_dataset

    dataset = load_dataset(path, tokenizer, max_seq_length)
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


def validate(settings: Settings, job_id: str) -> None:
    """Validate a ``validating_files`` job and queue it for training (or fail it)."""
    AutoConfig, AutoTokenizer = auto_classes()

    with session_scope(settings.database_url) as session:
        job = session.get(Job, job_id)
        if job is None or job.status != JobStatus.VALIDATING_FILES:
            return
        files = {"training_file": session.get(File, job.training_file)}
        if job.validation_file:
            files["validation_file"] = session.get(File, job.validation_file)
        model, options, n_epochs = (
            job.model,
            dict(job.options or {}),
            int(job.hyperparameters["n_epochs"]),
        )
        keys = {param: (row.storage_key if row else None) for param, row in files.items()}
    store = open_store(settings)
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
                    found = file_stats(path, tokenizer, int(limit))
                except ValueError as exc:
                    _fail(settings, job_id, f"{param.replace('_', ' ')}: {exc}", param)
                    return
                stats[param] = found
    except ObjectNotFound as exc:
        _fail(settings, job_id, f"a file of this job no longer exists ({exc})", "training_file")
        return
    except ModelUnavailable as exc:
        _fail(settings, job_id, str(exc), "model")
        return
    except Exception as exc:
        code, message, param = classify(exc)
        log.warning("job %s: validation error %s: %s", job_id, code, message)
        with session_scope(settings.database_url) as session:
            if code in TRANSIENT_CODES and jobs.retry_validation(
                session, job_id, code=code, message=message, max_retries=settings.max_job_retries
            ):
                return
            jobs.fail_validation(session, job_id, message, param, code=code)
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


def _fail(settings: Settings, job_id: str, message: str, param: str) -> None:
    log.info("job %s: validation failed: %s", job_id, message)
    with session_scope(settings.database_url) as session:
        jobs.fail_validation(session, job_id, message, param)
