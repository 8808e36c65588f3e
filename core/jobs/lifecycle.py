"""Fine-tuning job services. They take a Session and never commit: the caller's unit of work
(one request, one task step) commits once.

Every status change is a conditional UPDATE from an expected state, and a worker's writes are
fenced by the job's ``attempt``: a duplicate message or a worker whose lease was taken away
changes nothing.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import cache
from typing import Any, NamedTuple

from sqlalchemy import Select, bindparam, case, func, select, text, update
from sqlalchemy.orm import Session

from core import ids
from core.db.dml import execute_dml
from core.db.keyset import after_cursor
from core.db.models import Job, JobEvent, Model, Organization
from core.errors import Conflict, InvalidRequest, NotFound
from core.jobs import inputs, progress
from core.jobs.hyperparams import (
    AdapterConfig,
    Hyperparameters,
    TrainingOptions,
)
from core.jobs.resources import plan_job
from core.jobs.status import (
    ALL_STATUSES,
    NON_FINAL_STATUSES,
    WAITING_STATUSES,
    FailureCode,
    JobStatus,
)
from core.scheduling import quotas
from core.timeutil import utcnow
from core.webhooks import events as webhook_events
from core.webhooks.outbox import emit_job_event

log = logging.getLogger(__name__)

MAX_SEED = 2_147_483_647


@dataclass(frozen=True)
class NewJob:
    model: str
    training_file: str
    validation_file: str | None
    hyperparameters: Hyperparameters
    # None: not given (a fresh job trains the default adapter; a continued one its parent's).
    adapter: AdapterConfig | None
    seed: int | None
    suffix: str | None
    metadata: dict[str, str] | None
    options: dict[str, Any] = field(default_factory=dict)
    # Experiment trackers, as validated by the API (OpenAI's shape).
    integrations: list[dict[str, Any]] = field(default_factory=list)
    training: TrainingOptions = field(default_factory=TrainingOptions)
    method: str = "supervised"


def add_event(
    session: Session,
    job_id: str,
    message: str,
    *,
    level: str = "info",
    type: str = "message",
    data: dict[str, Any] | None = None,
) -> JobEvent:
    event = JobEvent(
        id=ids.event_id(),
        job_id=job_id,
        created_at=utcnow(),
        level=level,
        type=type,
        message=message,
        data=data,
    )
    session.add(event)
    return event


def create_job(
    session: Session,
    org_id: str,
    new: NewJob,
    declared_pools: Mapping[str, int | None] | None = None,
) -> Job:
    """Validate a job request against the catalogue, the caller's files and quota; insert it.

    ``options["pool"]`` (the ``pool`` extra) picks the worker pool; else
    core.scheduling.pools decides among the registered pools and ``declared_pools``
    (DORADO_POOLS) with the memory planner (core.jobs.resources), whose resolved training
    options join the job's ``options`` and whose plan is the job's ``resources``.

    ``model: "ft:..."`` continues fine-tuning: the base model (the one the planner sizes and
    the pool is chosen for) and the adapter are the parent job's."""
    origin = inputs.resolve_origin(session, org_id, new.model, new.adapter)
    parent, base, adapter = origin.parent, origin.base, origin.adapter
    quotas.check_can_queue(session, org_id)
    options = dict(new.options)
    if parent is not None:
        options["parent"], options["parent_job_id"] = new.model, parent.id
    training = inputs.usable_file(session, org_id, new.training_file, "training_file", new.method)
    if new.validation_file:
        inputs.usable_file(session, org_id, new.validation_file, "validation_file", new.method)
    hyper, method = inputs.method_settings(
        new.method, new.hyperparameters, training.example_count or 0
    )
    # The memory planner: training options for this model, GPUs, pool (or a 400 if none fits).
    planned = plan_job(
        session,
        base,
        adapter=adapter,
        training=new.training,
        max_seq_length=options.get("max_seq_length"),
        batch_size=inputs.batch_rows(new.method, int(hyper["batch_size"])),
        requested_pool=options.pop("pool", None),
        declared_pools=declared_pools,
        precision=options.get("precision"),
        nodes=int(options.get("nodes") or 1),
    )
    options.update(planned.training)
    seed = (
        new.seed
        if new.seed is not None
        else int.from_bytes(ids.random_token(8).encode(), "big") % MAX_SEED
    )
    now = utcnow()
    job = Job(
        id=ids.job_id(),
        organization_id=org_id,
        model=base.id,
        status=JobStatus.VALIDATING_FILES,
        training_file=training.id,
        validation_file=new.validation_file,
        hyperparameters=hyper,
        adapter=adapter.model_dump(),
        method=method,
        seed=seed,
        suffix=new.suffix or None,
        user_metadata=new.metadata or None,
        result_files=[],
        created_at=now,
        attempt=0,
        options=options,
        integrations=new.integrations or None,
        pause_requested=False,
        priority=0,
        pool=planned.pool,
        resources=planned.resources,
    )
    session.add(job)
    session.flush()
    progress.remember_latest_metrics(session, [(job, None)])  # no metrics yet: no query
    add_event(session, job.id, f"Created fine-tuning job: {job.id}")
    add_event(session, job.id, f"Validating training file: {training.id}")
    if new.validation_file:
        add_event(session, job.id, f"Validating validation file: {new.validation_file}")
    return job


def finish_validation(session: Session, job_id: str, stats: dict[str, Any]) -> bool:
    """Files tokenized fine: the job moves to the queue. False if it left validating_files
    (cancelled meanwhile, or a duplicate message already did this)."""
    result = execute_dml(
        session,
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.VALIDATING_FILES)
        .values(
            status=JobStatus.QUEUED,
            validation=stats,
            published_at=None,
            worker=None,
            lease_expires_at=None,
        ),
    )
    if result.rowcount != 1:
        return False
    add_event(session, job_id, "Files validated, moving job to queued state", data=stats)
    if stats.get("truncated_examples"):
        add_event(
            session,
            job_id,
            f"{stats['truncated_examples']} example(s) are longer than "
            f"{stats['max_seq_length']} tokens and will be truncated",
            level="warn",
        )
    return True


def fail_validation(
    session: Session,
    job_id: str,
    message: str,
    param: str | None = "training_file",
    code: FailureCode = FailureCode.INVALID_TRAINING_FILE,
) -> bool:
    """A ``validating_files`` job whose files cannot be used fails with ``code``. False if it
    had left validating_files (cancelled meanwhile, or a duplicate message)."""
    result = execute_dml(
        session,
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.VALIDATING_FILES)
        .values(
            status=JobStatus.FAILED,
            finished_at=utcnow(),
            error={"code": code, "message": message, "param": param},
            worker=None,
            lease_expires_at=None,
        ),
    )
    if result.rowcount != 1:
        return False
    add_event(session, job_id, f"File validation failed: {message}", level="error")
    emit_job_event(session, job_id, webhook_events.FAILED)
    return True


def get_job(session: Session, org_id: str, job_id: str) -> Job:
    job = session.get(Job, job_id)
    if job is None or job.organization_id != org_id:
        raise NotFound(f"No such fine-tuning job: {job_id}", param="fine_tuning_job_id")
    return job


@cache
def _read_job_statement() -> Select:
    return select(Job, progress.latest_metrics_column()).where(Job.id == bindparam("job_id"))


def read_job(session: Session, org_id: str, job_id: str) -> Job:
    """:func:`get_job` for showing the job: its progress comes in the same query."""
    row = session.execute(_read_job_statement(), {"job_id": job_id}).first()
    if row is None or row[0].organization_id != org_id:
        raise NotFound(f"No such fine-tuning job: {job_id}", param="fine_tuning_job_id")
    return progress.remember_latest_metrics(session, [row.tuple()])[0]


@cache
def _list_statement(by_status: bool, after: bool, limited: bool) -> Select:
    """Jobs of ``:org_id`` (of ``:status``), newest first, after the job ``:after``, at most
    ``:limit``: built once per shape, as it runs on every listing."""
    stmt = select(Job, progress.latest_metrics_column()).where(
        Job.organization_id == bindparam("org_id")
    )
    if by_status:
        stmt = stmt.where(Job.status == bindparam("status"))
    if after:
        # The cursor's key comes from a subquery (NULL for a job of another organization or
        # none: then no row matches, and list_jobs tells why): no round trip of its own.
        cursor_created_at = (
            select(Job.created_at)
            .where(Job.id == bindparam("after"), Job.organization_id == bindparam("org_id"))
            .scalar_subquery()
        )
        stmt = stmt.where(
            after_cursor(Job.created_at, Job.id, cursor_created_at, bindparam("after"))
        )
    stmt = stmt.order_by(Job.created_at.desc(), Job.id.desc())
    return stmt.limit(bindparam("limit")) if limited else stmt


def list_jobs(
    session: Session,
    org_id: str,
    *,
    limit: int,
    after: str | None,
    metadata: dict[str, str] | None = None,
    status: str | None = None,
) -> tuple[list[Job], bool]:
    """A page of jobs, newest first (optionally of one status: a Dorado extra), read with
    their progress."""
    if status is not None and status not in ALL_STATUSES:
        raise InvalidRequest(
            f"Unknown status '{status}'. One of: {', '.join(ALL_STATUSES)}", param="status"
        )
    params = {"org_id": org_id, "status": status, "after": after, "limit": limit + 1}
    if not metadata:
        stmt = _list_statement(status is not None, bool(after), True)
        rows = session.execute(stmt, params).tuples().all()
        if after and not rows:
            _check_cursor(session, org_id, after)
        return progress.remember_latest_metrics(session, rows[:limit]), len(rows) > limit
    # Metadata filters are rare and small; filter in Python to stay portable across dialects.
    if after:
        _check_cursor(session, org_id, after)
    stmt = _list_statement(status is not None, bool(after), False)
    matched: list[tuple[Job, Any]] = []
    for job, data in session.execute(stmt, params).tuples().yield_per(500):
        meta = job.user_metadata or {}
        if all(meta.get(k) == v for k, v in metadata.items()):
            matched.append((job, data))
            if len(matched) > limit:
                break
    return progress.remember_latest_metrics(session, matched[:limit]), len(matched) > limit


def _check_cursor(session: Session, org_id: str, after: str) -> None:
    """InvalidRequest unless ``after`` is a job of ``org_id``."""
    cursor_org = session.scalar(select(Job.organization_id).where(Job.id == after))
    if cursor_org != org_id:
        raise InvalidRequest(f"No such fine-tuning job: {after}", param="after")


def list_events(
    session: Session, job: Job, *, limit: int, after: str | None
) -> tuple[list[JobEvent], bool]:
    """A page of a job's events, newest first."""
    stmt = select(JobEvent).where(JobEvent.job_id == job.id)
    if after:
        cursor = session.scalar(
            select(JobEvent).where(JobEvent.id == after, JobEvent.job_id == job.id)
        )
        if cursor is None:
            raise InvalidRequest(f"No such event: {after}", param="after")
        stmt = stmt.where(JobEvent.seq < cursor.seq)
    rows = list(session.scalars(stmt.order_by(JobEvent.seq.desc()).limit(limit + 1)))
    return rows[:limit], len(rows) > limit


def pause_job(session: Session, org_id: str, job_id: str) -> Job:
    """Queued jobs pause at once; running ones at their next step, after a checkpoint."""
    job = get_job(session, org_id, job_id)
    if (
        execute_dml(
            session,
            update(Job)
            .where(Job.id == job.id, Job.status == JobStatus.QUEUED)
            .values(status=JobStatus.PAUSED),
        ).rowcount
        == 1
    ):
        add_event(session, job.id, "Fine-tuning job paused")
        emit_job_event(session, job.id, webhook_events.PAUSED)
    elif (
        execute_dml(
            session,
            update(Job)
            .where(
                Job.id == job.id, Job.status == JobStatus.RUNNING, Job.pause_requested.is_(False)
            )
            .values(pause_requested=True),
        ).rowcount
        == 1
    ):
        add_event(
            session,
            job.id,
            "Pause requested: the job will save a checkpoint and pause at its next step",
        )
    elif not (job.status == JobStatus.RUNNING and job.pause_requested):
        raise Conflict(
            f"Job {job.id} is {job.status}; only a queued or running job can be paused",
            param="fine_tuning_job_id",
            code="job_not_pausable",
        )
    session.refresh(job)
    return job


def resume_job(session: Session, org_id: str, job_id: str) -> Job:
    """A paused job goes back to the queue and continues from its last checkpoint."""
    job = get_job(session, org_id, job_id)
    result = execute_dml(
        session,
        update(Job)
        .where(Job.id == job.id, Job.status == JobStatus.PAUSED)
        .values(status=JobStatus.QUEUED, published_at=None),
    )
    if result.rowcount != 1:
        raise Conflict(
            f"Job {job.id} is {job.status}; only a paused job can be resumed",
            param="fine_tuning_job_id",
            code="job_not_resumable",
        )
    add_event(session, job.id, "Fine-tuning job resumed, moving job to queued state")
    session.refresh(job)
    return job


def mark_published(session: Session, job_id: str) -> None:
    """Note that a message for the job is in the broker. Call in a transaction of its own."""
    if session.get_bind().dialect.name == "postgresql":
        # A hint, not a fact worth an fsync: if a crash loses it, the sweeper publishes the
        # job once more and the guarded claim makes the duplicate a no-op.
        session.execute(text("SET LOCAL synchronous_commit TO OFF"))
    session.execute(update(Job).where(Job.id == job_id).values(published_at=utcnow()))


def cancel_job(session: Session, org_id: str, job_id: str) -> Job:
    job = get_job(session, org_id, job_id)
    result = execute_dml(
        session,
        update(Job)
        .where(Job.id == job.id, Job.status.in_(NON_FINAL_STATUSES))
        .values(
            status=JobStatus.CANCELLED,
            finished_at=utcnow(),
            estimated_finish=None,
            lease_expires_at=None,
        ),
    )
    if result.rowcount == 0:
        session.refresh(job)
        raise Conflict(
            f"Job {job.id} has already {job.status}; only a job that is queued, "
            "running or paused can be cancelled",
            param="fine_tuning_job_id",
            code="job_not_cancellable",
        )
    add_event(session, job.id, "Fine-tuning job cancelled")
    emit_job_event(session, job.id, webhook_events.CANCELLED)
    session.refresh(job)
    return job


# --- worker side -------------------------------------------------------------------------


def claim_job(session: Session, job_id: str, worker: str, lease_seconds: int) -> int | None:
    """Move a queued job to running for this worker; returns its new attempt, or None if the
    job was not queued (duplicate delivery, cancelled, already done)."""
    now = utcnow()
    result = execute_dml(
        session,
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.QUEUED)
        .values(
            status=JobStatus.RUNNING,
            attempt=Job.attempt + 1,
            worker=worker,
            lease_expires_at=now + timedelta(seconds=lease_seconds),
            started_at=func.coalesce(Job.started_at, now),
            estimated_finish=None,
            pause_requested=False,
        ),
    )
    if result.rowcount != 1:
        return None
    attempt = session.scalar(select(Job.attempt).where(Job.id == job_id))
    add_event(session, job_id, "Fine-tuning job started")
    return attempt


def _fence(job_id: str, attempt: int):
    return (Job.id == job_id, Job.attempt == attempt, Job.status == JobStatus.RUNNING)


def renew_lease(
    session: Session,
    job_id: str,
    attempt: int,
    lease_seconds: int,
    estimated_finish: datetime | None = None,
) -> bool:
    """Extend the lease; False means the job is no longer ours (cancelled or taken over)."""
    values: dict[str, Any] = {"lease_expires_at": utcnow() + timedelta(seconds=lease_seconds)}
    if estimated_finish is not None:
        values["estimated_finish"] = estimated_finish
    result = execute_dml(session, update(Job).where(*_fence(job_id, attempt)).values(**values))
    return result.rowcount == 1


def still_ours(session: Session, job_id: str, attempt: int) -> bool:
    return job_control(session, job_id, attempt) != "stop"


def job_control(session: Session, job_id: str, attempt: int) -> str:
    """What the worker holding ``attempt`` should do: "run", "pause", "requeue" (a host of
    its multi-node gang is shutting down: checkpoint and go back to the queue) or "stop"."""
    row = session.execute(
        select(Job.status, Job.attempt, Job.pause_requested, Job.gang).where(Job.id == job_id)
    ).one_or_none()
    if row is None or row.status != JobStatus.RUNNING or row.attempt != attempt:
        return "stop"
    if row.pause_requested:
        return "pause"
    return "requeue" if leaving_hosts(row.gang, attempt) else "run"


def leaving_hosts(gang: dict[str, Any] | None, attempt: int) -> list[str]:
    """The hosts of a multi-node job's gang (of ``attempt``) that asked to leave because they
    are shutting down (:func:`core.scheduling.gangs.leave`)."""
    if not gang or gang.get("attempt") != attempt:
        return []
    return list(gang.get("leaving", []))


def requeue_for_shutdown(
    session: Session, job_id: str, attempt: int, step: int, *, for_gang: bool = False
) -> bool:
    """The worker is stopping or, ``for_gang``, hosts of its multi-node gang are (they asked
    to leave): the job (checkpointed at ``step``) goes back to the queue, no retry counted."""
    gang = session.scalar(select(Job.gang).where(Job.id == job_id)) if for_gang else None
    leaving = leaving_hosts(gang, attempt)
    result = execute_dml(
        session,
        update(Job)
        .where(*_fence(job_id, attempt))
        .values(
            status=JobStatus.QUEUED,
            worker=None,
            lease_expires_at=None,
            estimated_finish=None,
            published_at=None,
        ),
    )
    if result.rowcount != 1:
        return False
    where = f"after a checkpoint at step {step}" if step else "before training started"
    who = (
        f"Host{'s' * (len(leaving) > 1)} {', '.join(leaving)} of the job's gang "
        f"{'are' if len(leaving) > 1 else 'is'}"
        if leaving
        else "The worker is"
    )
    add_event(session, job_id, f"{who} shutting down; the job was re-queued {where}")
    return True


def mark_paused(session: Session, job_id: str, attempt: int, step: int) -> bool:
    """The worker saved a checkpoint for a requested pause and lets the job go."""
    result = execute_dml(
        session,
        update(Job)
        .where(*_fence(job_id, attempt))
        .values(
            status=JobStatus.PAUSED,
            pause_requested=False,
            worker=None,
            lease_expires_at=None,
            estimated_finish=None,
        ),
    )
    if result.rowcount != 1:
        return False
    add_event(session, job_id, f"Fine-tuning job paused at step {step}")
    emit_job_event(session, job_id, webhook_events.PAUSED)
    return True


def record_event(
    session: Session,
    job_id: str,
    attempt: int,
    message: str,
    *,
    level: str = "info",
    type: str = "message",
    data: dict[str, Any] | None = None,
) -> bool:
    """Add a worker event only while the worker still owns the job."""
    if not still_ours(session, job_id, attempt):
        return False
    add_event(session, job_id, message, level=level, type=type, data=data)
    return True


def discard_replayed_metrics(
    session: Session, job_id: str, attempt: int, resume_step: int
) -> list[int]:
    """Delete the metrics events of the steps after ``resume_step`` and return those steps.

    A lost attempt (worker killed, transient error) reported steps its last checkpoint did
    not keep; the attempt resuming from ``resume_step`` trains and reports them again, so
    without this the job's metrics would list them twice. Nothing happens (``[]``) unless
    ``attempt`` still owns the job.
    """
    if not still_ours(session, job_id, attempt):
        return []
    stale = {
        event: int((event.data or {}).get("step") or 0)
        for event in session.scalars(
            select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.type == "metrics")
        )
    }
    steps = sorted({step for step in stale.values() if step > resume_step})
    for event, step in stale.items():
        if step > resume_step:
            session.delete(event)
    if steps:
        add_event(
            session,
            job_id,
            f"Discarded the metrics of {len(steps)} step(s) after step {resume_step}, trained "
            "by an attempt that was lost before its next checkpoint; they are trained again",
            data={"resume_step": resume_step, "discarded_steps": steps},
        )
    return steps


def fine_tuned_model_name(session: Session, job: Job) -> str:
    """``ft:{base}:{org}:{suffix}:{8 chars}`` as OpenAI names them (empty suffix -> ``::``)."""
    org = session.get(Organization, job.organization_id)
    org_slug = re.sub(r"[^a-z0-9-]+", "-", (org.name if org else job.organization_id).lower())
    return f"ft:{job.model}:{org_slug.strip('-') or 'org'}:{job.suffix or ''}:{job.id[-8:]}"


def succeed_job(
    session: Session,
    job_id: str,
    attempt: int,
    *,
    trained_tokens: int,
    adapter_key: str,
    result_files: list[str],
) -> str | None:
    """Mark the job succeeded; returns its fine-tuned model name, or None if fenced off."""
    job = session.get(Job, job_id)
    if job is None:
        return None
    name = fine_tuned_model_name(session, job)
    result = execute_dml(
        session,
        update(Job)
        .where(*_fence(job_id, attempt))
        .values(
            status=JobStatus.SUCCEEDED,
            fine_tuned_model=name,
            trained_tokens=trained_tokens,
            adapter_key=adapter_key,
            result_files=result_files,
            finished_at=utcnow(),
            estimated_finish=None,
            lease_expires_at=None,
        ),
    )
    if result.rowcount != 1:
        return None
    session.add(
        Model(
            id=name,
            kind="fine-tuned",
            owned_by=job.organization_id,
            organization_id=job.organization_id,
            job_id=job.id,
            source=adapter_key,
            created_at=utcnow(),
        )
    )
    add_event(session, job_id, f"New fine-tuned model created: {name}")
    add_event(session, job_id, "The job has successfully completed")
    emit_job_event(session, job_id, webhook_events.SUCCEEDED)
    return name


def fail_job(
    session: Session,
    job_id: str,
    attempt: int,
    *,
    code: FailureCode,
    message: str,
    param: str | None = None,
) -> bool:
    """The worker holding ``attempt`` gives up on the job: failed with ``code``. False if
    fenced off (cancelled, or taken over by another attempt)."""
    result = execute_dml(
        session,
        update(Job)
        .where(*_fence(job_id, attempt))
        .values(
            status=JobStatus.FAILED,
            error={"code": code, "message": message, "param": param},
            finished_at=utcnow(),
            estimated_finish=None,
            lease_expires_at=None,
        ),
    )
    if result.rowcount != 1:
        return False
    add_event(session, job_id, f"Fine-tuning job failed: {message}", level="error")
    emit_job_event(session, job_id, webhook_events.FAILED)
    return True


# --- sweeper -----------------------------------------------------------------------------


def requeue_expired_leases(session: Session, max_retries: int) -> list[str]:
    """Running jobs whose worker stopped renewing its lease go back to the queue (to resume
    from their last checkpoint), up to ``max_retries`` times; then they fail."""
    now = utcnow()
    expired = list(
        session.scalars(
            select(Job.id).where(Job.status == JobStatus.RUNNING, Job.lease_expires_at < now)
        )
    )
    requeued = []
    for job_id in expired:
        lost = (Job.id == job_id, Job.status == JobStatus.RUNNING, Job.lease_expires_at < now)
        given_up = execute_dml(
            session,
            update(Job)
            .where(*lost, Job.retries >= max_retries)
            .values(
                status=JobStatus.FAILED,
                finished_at=now,
                lease_expires_at=None,
                estimated_finish=None,
                error={
                    "code": FailureCode.WORKER_LOST,
                    "param": None,
                    "message": f"The worker running this job stopped responding {max_retries + 1} "
                    "times; giving up",
                },
            ),
        )
        if given_up.rowcount == 1:
            add_event(
                session,
                job_id,
                "The worker running this job stopped responding again; the job failed",
                level="error",
            )
            emit_job_event(session, job_id, webhook_events.FAILED)
            continue
        result = execute_dml(
            session,
            update(Job)
            .where(*lost)
            # A pause the lost worker never carried out is honoured now.
            .values(
                status=case(
                    (Job.pause_requested.is_(True), JobStatus.PAUSED), else_=JobStatus.QUEUED
                ),
                retries=Job.retries + 1,
                pause_requested=False,
                worker=None,
                lease_expires_at=None,
                published_at=None,
                estimated_finish=None,
            ),
        )
        if result.rowcount == 1:
            status = session.scalar(select(Job.status).where(Job.id == job_id))
            add_event(
                session,
                job_id,
                "The worker running this job stopped responding; the "
                f"job was {'paused' if status == JobStatus.PAUSED else 're-queued'} and will "
                "continue from its last checkpoint",
                level="warn",
            )
            if status == "paused":
                emit_job_event(session, job_id, webhook_events.PAUSED)
            requeued.append(job_id)
    return requeued


def retry_validation(
    session: Session,
    job_id: str,
    *,
    code: FailureCode,
    message: str,
    max_retries: int,
    validator: str | None = None,
) -> bool:
    """Validation hit an error that may pass: leave the job validating, to be sent again by
    the sweeper. False when its retries are spent: the caller fails it. ``validator``: only
    while the job is still leased to it (see core.scheduling.validation)."""
    mine = () if validator is None else (Job.worker == validator,)
    result = execute_dml(
        session,
        update(Job)
        .where(
            Job.id == job_id,
            Job.status == JobStatus.VALIDATING_FILES,
            Job.retries < max_retries,
            *mine,
        )
        .values(retries=Job.retries + 1, published_at=None, worker=None, lease_expires_at=None),
    )
    if result.rowcount != 1:
        return False
    retries = session.scalar(select(Job.retries).where(Job.id == job_id))
    add_event(
        session,
        job_id,
        f"Transient error ({code}): {message}. Retrying validation "
        f"(retry {retries} of {max_retries})",
        level="warn",
    )
    return True


def retry_after_transient_error(
    session: Session,
    job_id: str,
    attempt: int,
    *,
    code: FailureCode,
    message: str,
    max_retries: int,
) -> bool:
    """Re-queue a job stopped by an error that may pass (it resumes from its last
    checkpoint). False when its retries are spent: the caller fails it."""
    result = execute_dml(
        session,
        update(Job)
        .where(*_fence(job_id, attempt), Job.retries < max_retries)
        .values(
            status=JobStatus.QUEUED,
            retries=Job.retries + 1,
            worker=None,
            lease_expires_at=None,
            published_at=None,
            estimated_finish=None,
        ),
    )
    if result.rowcount != 1:
        return False
    retries = session.scalar(select(Job.retries).where(Job.id == job_id))
    add_event(
        session,
        job_id,
        f"Transient error ({code}): {message}. Retrying from the last "
        f"checkpoint (retry {retries} of {max_retries})",
        level="warn",
    )
    return True


class Unpublished(NamedTuple):
    """A job waiting for the message that wakes its worker (see :func:`jobs_to_publish`)."""

    id: str
    status: str
    pool: str | None


def jobs_to_publish(session: Session, republish_after_seconds: int) -> list[Unpublished]:
    """Jobs waiting for a message (queued, or validating_files) that was never sent, or sent
    long ago and not acted on; oldest first. A job a validator holds a live lease on is being
    acted on: sending it again would only wake another validator for nothing."""
    now = utcnow()
    cutoff = now - timedelta(seconds=republish_after_seconds)
    rows = session.execute(
        select(Job.id, Job.status, Job.pool)
        .where(
            Job.status.in_(WAITING_STATUSES),
            (Job.published_at.is_(None)) | (Job.published_at < cutoff),
            (Job.status != JobStatus.VALIDATING_FILES)
            | Job.lease_expires_at.is_(None)
            | (Job.lease_expires_at < now),
        )
        .order_by(Job.created_at)
    )
    return [Unpublished(*row) for row in rows]
