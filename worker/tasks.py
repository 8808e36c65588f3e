"""Celery tasks. They take ids, read everything else from the database, and write results
back through fenced conditional updates (see core.jobs)."""

from __future__ import annotations

import logging
import os
import socket
import tempfile
from pathlib import Path

from core import jobs
from core.db import session_scope
from core.files import create_system_file
from core.models import File, Job
from core.queue import RUN_JOB_TASK
from core.settings import load_settings
from core.storage import ObjectNotFound, open_store
from worker import artifacts
from worker.celery_app import app
from worker.model_store import ModelUnavailable, ensure_model
from worker.reporting import JobReporter
from worker.training.spec import AdapterSpec, TrainingStopped, TrainSpec

log = logging.getLogger(__name__)


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def build_spec(job: Job) -> TrainSpec:
    from core.hyperparams import learning_rate

    adapter = job.adapter
    modules = adapter.get("target_modules", "all-linear")
    hyper = job.hyperparameters
    return TrainSpec(
        adapter=AdapterSpec(
            type=adapter["type"],
            r=int(adapter["r"]),
            alpha=int(adapter["alpha"]),
            dropout=float(adapter["dropout"]),
            target_modules=modules if isinstance(modules, str) else tuple(modules),
        ),
        n_epochs=int(hyper["n_epochs"]),
        batch_size=int(hyper["batch_size"]),
        learning_rate=learning_rate(adapter["type"], float(hyper["learning_rate_multiplier"])),
        seed=int(job.seed),
        extra={"base_model_name": job.model, "job_id": job.id},
    )


def classify(exc: BaseException) -> tuple[str, str, str | None]:
    """(code, human message, param) for a failed run."""
    if isinstance(exc, ObjectNotFound):
        return "file_missing", f"A stored file is missing: {exc}", "training_file"
    if isinstance(exc, ModelUnavailable):
        return "model_unavailable", str(exc), "model"
    if type(exc).__name__ == "OutOfMemoryError" or isinstance(exc, MemoryError):
        return (
            "out_of_memory",
            "The worker ran out of memory; try a smaller batch_size or max_seq_length",
            "hyperparameters.batch_size",
        )
    if isinstance(exc, ValueError):
        return "invalid_training_data", f"Training data problem: {exc}", "training_file"
    return "internal_error", f"Training failed on the worker: {type(exc).__name__}: {exc}", None


@app.task(name=RUN_JOB_TASK, ignore_result=True)
def run_job(job_id: str) -> None:
    settings = load_settings()
    with session_scope(settings.database_url) as session:
        attempt = jobs.claim_job(session, job_id, worker_name(), settings.lease_seconds)
    if attempt is None:
        log.info("job %s: not claimable (already taken, cancelled or finished)", job_id)
        return
    log.info("job %s: claimed (attempt %s)", job_id, attempt)
    reporter = JobReporter(settings, job_id, attempt)
    reporter.start()
    try:
        _train(settings, job_id, attempt, reporter)
    except TrainingStopped:
        log.info("job %s: stopped (cancelled or re-assigned)", job_id)
    except Exception as exc:
        log.exception("job %s: failed", job_id)
        code, message, param = classify(exc)
        with session_scope(settings.database_url) as session:
            jobs.fail_job(session, job_id, attempt, code=code, message=message, param=param)
    finally:
        reporter.close()


def _train(settings, job_id: str, attempt: int, reporter: JobReporter) -> None:
    from worker.training.recipe import train

    store = open_store(settings)
    with session_scope(settings.database_url) as session:
        job = session.get(Job, job_id)
        training = session.get(File, job.training_file)
        spec = build_spec(job)
        model_name, org_id, training_key = job.model, job.organization_id, training.storage_key
    with tempfile.TemporaryDirectory(prefix=f"dorado-{job_id}-") as tmp_name:
        tmp = Path(tmp_name)
        data_path = tmp / "train.jsonl"
        store.download_file(training_key, data_path)
        base_dir = ensure_model(settings, store, model_name)
        if reporter.should_stop():
            raise TrainingStopped()
        result = train(spec, base_dir, data_path, tmp / "adapter", reporter)
        if reporter.should_stop():
            raise TrainingStopped()
        key = artifacts.adapter_key(job_id)
        store.put_file(key, artifacts.pack_adapter(result.adapter_dir, tmp / "adapter.tar.gz"))
        for name in artifacts.ADAPTER_FILES:
            store.put_file(artifacts.adapter_file_key(job_id, name), result.adapter_dir / name)
        csv_path = artifacts.write_metrics_csv(reporter.metrics_rows, tmp / "metrics.csv")
        with session_scope(settings.database_url) as session:
            if not jobs.still_ours(session, job_id, attempt):
                raise TrainingStopped()
            results = create_system_file(
                session,
                store,
                org_id,
                filename=f"{job_id}-metrics.csv",
                purpose="fine-tune-results",
                path=csv_path,
            )
            name = jobs.succeed_job(
                session,
                job_id,
                attempt,
                trained_tokens=result.trained_tokens,
                adapter_key=key,
                result_files=[results.id],
            )
            if name is None:
                raise TrainingStopped()
        log.info("job %s: succeeded as %s (%s tokens)", job_id, name, result.trained_tokens)
