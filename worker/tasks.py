"""Celery tasks. They take ids, read everything else from the database, and write results
back through fenced conditional updates (see core.jobs.lifecycle)."""

from __future__ import annotations

import logging
import os
import socket
import tempfile
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path

from core.db.engine import session_scope
from core.db.models import File, Job, Model
from core.jobs import checkpoints
from core.jobs import lifecycle as jobs
from core.jobs.hyperparams import learning_rate
from core.jobs.status import FailureCode
from core.scheduling import dispatch as scheduling
from core.scheduling.broker import RUN_JOB_TASK, VALIDATE_JOB_TASK, publish_job
from core.settings import Settings, load_settings
from core.storage import quota
from core.storage.files import create_system_file
from core.storage.objects import ObjectNotFound, ObjectStore, download_dir, open_store
from core.timeutil import utcnow
from worker import artifacts, registry, shutdown
from worker.celery_app import app
from worker.failures import TRANSIENT_CODES, classify, oom_kills
from worker.model_store import ensure_model
from worker.reporting import JobReporter, load_history
from worker.trackers import job_reporter
from worker.training.options import JobOptions, Sharding
from worker.training.spec import (
    AdapterSpec,
    DpoSpec,
    TrainingPaused,
    TrainingStopped,
    TrainSpec,
)

log = logging.getLogger(__name__)

HAND_BACK_DELAY_SECONDS = 1.0


def worker_name() -> str:
    """The registry name (Celery node name) of a training worker, else ``host:pid``."""
    return registry.name() or f"{socket.gethostname()}:{os.getpid()}"


def build_spec(job: Job) -> TrainSpec:
    """The frozen training spec of a job row (hyperparameters already resolved).

    The one place where the job's stored options become typed (``JobOptions.from_stored``
    rejects a key it does not know); their ``learning_rate`` replaces the multiplied base rate,
    and the job's resolved ``training`` options (warmup, weight decay, schedule, gradient
    checkpointing, micro-batch tokens) reach the spec and its engine options, with the
    planner's ``sharding`` from its ``resources``. A ``dpo`` job trains by DPO with its
    resolved ``beta``.
    """
    adapter = job.adapter
    modules = adapter.get("target_modules", "all-linear")
    hyper = job.hyperparameters
    options = JobOptions.from_stored(job.options)
    lr = options.learning_rate or learning_rate(
        adapter["type"], float(hyper["learning_rate_multiplier"])
    )
    return TrainSpec(
        adapter=AdapterSpec(
            type=adapter["type"],
            r=int(adapter["r"]),
            alpha=int(adapter["alpha"]),
            dropout=float(adapter["dropout"]),
            target_modules=modules if isinstance(modules, str) else tuple(modules),
            quantization=adapter.get("quantization"),
        ),
        n_epochs=int(hyper["n_epochs"]),
        batch_size=int(hyper["batch_size"]),
        learning_rate=float(lr),
        seed=int(job.seed),
        max_seq_length=options.max_seq_length,
        checkpoint_every_n_steps=options.checkpoint_every_n_steps,
        warmup_ratio=options.warmup_ratio or 0.0,
        weight_decay=options.weight_decay or 0.0,
        gradient_checkpointing=bool(options.gradient_checkpointing),
        options=options.engine_options(
            sharding=planned_sharding(job.resources), base_model_name=job.model, job_id=job.id
        ),
        dpo=dpo_spec(job.method),
    )


def planned_sharding(resources: dict | None) -> Sharding:
    """How the memory planner split the job over its GPUs (``core.jobs.planner``, the job's
    ``resources``): "fsdp" when it fits only sharded, else (and for a job planned before
    sharding existed, or not planned) "ddp"."""
    return "fsdp" if (resources or {}).get("sharding") == "fsdp" else "ddp"


def dpo_spec(method: dict | None) -> DpoSpec | None:
    """The DPO settings of a job's stored ``method``, or None for a supervised job."""
    if not method or method.get("type") != "dpo":
        return None
    return DpoSpec(beta=float(method["dpo"]["hyperparameters"]["beta"]))


@dataclass(frozen=True)
class Claimed:
    """What the task read from the database, so that it holds no connection while training."""

    spec: TrainSpec
    model: str
    organization_id: str
    training_key: str
    validation_key: str | None
    resume_prefix: str | None
    resume_step: int
    parent_job_id: str | None = None


def _load(settings: Settings, job_id: str) -> Claimed:
    with session_scope(settings.database_url) as session:
        job = session.get_one(Job, job_id)  # claimed: the row exists
        training = session.get(File, job.training_file)
        if training is None:
            raise ObjectNotFound(job.training_file)
        validation = session.get(File, job.validation_file) if job.validation_file else None
        if job.validation_file and validation is None:
            raise ObjectNotFound(job.validation_file)
        latest = checkpoints.latest_checkpoint(session, job_id)
        parent = (job.options or {}).get("parent")
        parent_row = session.get(Model, parent) if parent else None
        if parent and (parent_row is None or parent_row.job_id is None):
            raise ObjectNotFound(f"the adapter of the parent model {parent}")
        return Claimed(
            spec=build_spec(job),
            model=job.model,
            organization_id=job.organization_id,
            training_key=training.storage_key,
            validation_key=validation.storage_key if validation else None,
            resume_prefix=latest.storage_prefix if latest else None,
            resume_step=latest.step_number if latest else 0,
            parent_job_id=parent_row.job_id if parent_row else None,
        )


@app.task(name=VALIDATE_JOB_TASK, ignore_result=True)
def validate_job(job_id: str) -> None:
    from worker.validation import validate

    validate(load_settings(), job_id)


@app.task(name=RUN_JOB_TASK, ignore_result=True)
def run_job(job_id: str) -> None:
    """A wake-up for this worker's pool: claim the best eligible queued job
    (core.scheduling.dispatch; not necessarily ``job_id``) and train it."""
    settings = load_settings()
    with session_scope(settings.database_url) as session:
        dispatched = scheduling.claim_next(
            session,
            pool=registry.pool(),
            worker=worker_name(),
            lease_seconds=settings.lease_seconds,
        )
    if dispatched is None:
        if registry.draining():
            _hand_back(settings, job_id)
        else:
            log.info("wake-up for job %s: nothing eligible in pool %s", job_id, registry.pool())
        return
    registry.set_current_job(dispatched.job_id)
    try:
        _run_claimed(settings, dispatched.job_id, dispatched.attempt)
    finally:
        registry.set_current_job(None)
        _wake_held(settings, dispatched.organization_id)


def _hand_back(settings: Settings, job_id: str) -> None:
    """A draining worker got a wake-up (before its consumer was cancelled): send it again
    for another worker of the pool, so that it is not lost."""
    shutdown.wait(HAND_BACK_DELAY_SECONDS)  # never a hot loop if this worker gets it back
    try:
        publish_job(settings, job_id, registry.pool())
        log.info("draining: handed the wake-up for job %s back to %s", job_id, registry.queue())
    except Exception:  # the sweeper re-publishes the job
        log.exception("draining: could not hand back job %s", job_id)


def _wake_held(settings: Settings, org_id: str) -> None:
    """A job left running: wake a worker for the organization's job its quota held back."""
    try:
        with session_scope(settings.database_url) as session:
            held = scheduling.next_held(session, org_id)
        if held is not None:
            publish_job(settings, held[0], held[1])
    except Exception:  # the sweeper re-publishes it
        log.exception("could not wake a worker for organization %s", org_id)


def _run_claimed(settings: Settings, job_id: str, attempt: int) -> None:
    log.info("job %s: claimed (attempt %s)", job_id, attempt)
    store = open_store(settings)
    with session_scope(settings.database_url) as session:
        job = session.get_one(Job, job_id)
        # A job's own limit may only tighten the operator's (older rows may hold any value).
        requested = (job.options or {}).get("max_run_seconds") or settings.max_job_seconds
        limit = min(int(requested), settings.max_job_seconds)
        started = job.started_at or utcnow()  # the claim set it
        deadline = started + timedelta(seconds=limit)
    reporter = job_reporter(settings, store, job_id, attempt, deadline=deadline)
    reporter.start()
    # A training process the kernel kills while this count stays put was not out of memory.
    kills_before = oom_kills()
    try:
        _train(settings, store, job_id, attempt, reporter)
    except TrainingStopped:
        if reporter.timed_out:
            with session_scope(settings.database_url) as session:
                jobs.fail_job(
                    session,
                    job_id,
                    attempt,
                    code=FailureCode.MAX_RUN_TIME_EXCEEDED,
                    message=f"The job ran longer than its limit of {limit} s",
                    param="max_run_seconds",
                )
        log.info(
            "job %s: stopped (%s)",
            job_id,
            "time limit" if reporter.timed_out else "cancelled or re-assigned",
        )
    except TrainingPaused as paused:
        step = getattr(paused, "step", 0)
        with session_scope(settings.database_url) as session:
            if shutdown.in_progress():
                jobs.requeue_for_shutdown(session, job_id, attempt, step)
            else:
                jobs.mark_paused(session, job_id, attempt, step)
        log.info(
            "job %s: %s at step %s",
            job_id,
            "re-queued for shutdown" if shutdown.in_progress() else "paused",
            step,
        )
    except Exception as exc:
        log.exception("job %s: failed", job_id)
        code, message, param = classify(exc, oom_kills_before=kills_before)
        with session_scope(settings.database_url) as session:
            if code in TRANSIENT_CODES and jobs.retry_after_transient_error(
                session,
                job_id,
                attempt,
                code=code,
                message=message,
                max_retries=settings.max_job_retries,
            ):
                return
            jobs.fail_job(session, job_id, attempt, code=code, message=message, param=param)
    finally:
        reporter.close()


def _train(
    settings: Settings, store: ObjectStore, job_id: str, attempt: int, reporter: JobReporter
) -> None:
    from core.observability.logconfig import configure_logging
    from worker.training.distributed import plan_parallelism, run_training

    claimed = _load(settings, job_id)
    with session_scope(settings.database_url) as session:
        # Steps a lost attempt reported after its last checkpoint are about to run again.
        jobs.discard_replayed_metrics(session, job_id, attempt, claimed.resume_step)
    with tempfile.TemporaryDirectory(prefix=f"dorado-{job_id}-") as tmp_name:
        tmp = Path(tmp_name)
        data_path = tmp / "train.jsonl"
        store.download_file(claimed.training_key, data_path)
        valid_path = None
        if claimed.validation_key:
            valid_path = tmp / "valid.jsonl"
            store.download_file(claimed.validation_key, valid_path)
        resume_dir = None
        if claimed.resume_prefix:
            resume_dir = tmp / "resume"
            download_dir(store, claimed.resume_prefix, resume_dir)
            reporter.metrics_rows = load_history(resume_dir)
        spec = claimed.spec
        if claimed.parent_job_id and not resume_dir:  # a checkpoint already holds the weights
            parent_dir = tmp / "parent-adapter"
            parent_dir.mkdir()
            for name in artifacts.ADAPTER_FILES:
                key = artifacts.adapter_file_key(claimed.parent_job_id, name)
                store.download_file(key, parent_dir / name)
            spec = replace(spec, init_adapter_dir=parent_dir)
        base_dir = ensure_model(settings, store, claimed.model)
        if reporter.should_stop():
            raise TrainingStopped()
        if shutdown.in_progress():  # nothing trained yet: hand the job back as it was
            raise TrainingPaused(step=0)
        # One process per GPU (or DORADO_WORKER_CPU_PROCESSES on CPU); rank 0 uses `reporter`.
        # A single one is a child too (isolated), unless DORADO_WORKER_ISOLATE_TRAINING=0.
        plan = plan_parallelism(settings.worker_gpus_per_job, settings.worker_cpu_processes)
        result = run_training(
            spec,
            base_dir,
            data_path,
            tmp / "adapter",
            reporter,
            plan=plan,
            validation_file=valid_path,
            resume_from=resume_dir,
            timeout_seconds=settings.worker_dist_timeout_seconds,
            log_setup=configure_logging,
            isolate=settings.worker_isolate_training,
        )
        if reporter.should_stop():
            raise TrainingStopped()
        key = artifacts.adapter_key(job_id)
        store.put_file(key, artifacts.pack_adapter(result.adapter_dir, tmp / "adapter.tar.gz"))
        for name in artifacts.adapter_files(result.adapter_dir):
            store.put_file(artifacts.adapter_file_key(job_id, name), result.adapter_dir / name)
        csv_path = artifacts.write_metrics_csv(reporter.metrics_rows, tmp / "metrics.csv")
        with session_scope(settings.database_url) as session:
            if not jobs.still_ours(session, job_id, attempt):
                raise TrainingStopped()
            results = create_system_file(
                session,
                store,
                claimed.organization_id,
                filename=f"{job_id}-metrics.csv",
                purpose="fine-tune-results",
                path=csv_path,
            )
            quota.refresh_job_bytes(session, store, job_id)  # counted in the storage quota
            model_name = jobs.succeed_job(
                session,
                job_id,
                attempt,
                trained_tokens=result.trained_tokens,
                adapter_key=key,
                result_files=[results.id],
            )
            if model_name is None:
                raise TrainingStopped()
        log.info("job %s: succeeded as %s (%s tokens)", job_id, model_name, result.trained_tokens)
