"""Operator actions on any organization's jobs: cancel, retry, requeue, priority, bump.

Each action is a conditional update from the states it allows (an illegal transition is a
Conflict naming the job's state) and leaves a job event and an audit event. Callers (the
admin API and ``dorado-admin``) commit, then wake a worker for a job that went back to the
queue (core.scheduling.wakeups.commit_and_publish; the sweeper does it anyway if that fails).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from core.db.dml import execute_dml
from core.db.models import Job, Organization
from core.errors import Conflict, InvalidRequest, NotFound
from core.jobs import checkpoints
from core.jobs import lifecycle as jobs
from core.jobs.status import NON_FINAL_STATUSES, WAITING_STATUSES, JobStatus
from core.scheduling import gangs, pools
from core.scheduling.broker import DEFAULT_POOL
from core.tenancy import audit

#: Not yet given to a worker: what an operator may bump to the front of its pool.
WAITING = (*WAITING_STATUSES, JobStatus.PAUSED)
MAX_PRIORITY = 1_000_000


@dataclass(frozen=True)
class Actor:
    """Who acts, for the audit log: ``key:<prefix>`` (admin API) or ``cli:<os user>``."""

    name: str
    api_key_id: str | None = None
    ip: str | None = None


def find_job(session: Session, job_id: str) -> Job:
    """Any organization's job (operators only)."""
    job = session.get(Job, job_id)
    if job is None:
        raise NotFound(
            f"No such fine-tuning job: {job_id}", param="fine_tuning_job_id", code="job_not_found"
        )
    return job


def _audit(session: Session, actor: Actor, action: str, job: Job, **details) -> None:
    audit.record(
        session,
        action=action,
        object_type="fine_tuning.job",
        object_id=job.id,
        organization_id=job.organization_id,
        actor=actor.name,
        api_key_id=actor.api_key_id,
        details=details or None,
        ip=actor.ip,
    )


def cancel(session: Session, job_id: str, actor: Actor) -> Job:
    job = find_job(session, job_id)
    job = jobs.cancel_job(session, job.organization_id, job.id)
    _audit(session, actor, "job.cancel", job)
    return job


def retry(session: Session, job_id: str, actor: Actor) -> tuple[Job, int | None]:
    """A failed or cancelled job goes back to the queue; it resumes from its latest checkpoint
    when it has one (returned as the step), else it starts over. A job that failed before its
    files were validated is validated again."""
    job = find_job(session, job_id)
    latest = checkpoints.latest_checkpoint(session, job.id)
    target = JobStatus.QUEUED if job.validation is not None else JobStatus.VALIDATING_FILES
    result = execute_dml(
        session,
        update(Job)
        .where(Job.id == job.id, Job.status.in_((JobStatus.FAILED, JobStatus.CANCELLED)))
        .values(
            status=target,
            error=None,
            finished_at=None,
            started_at=None,
            retries=0,
            worker=None,
            lease_expires_at=None,
            estimated_finish=None,
            published_at=None,
            pause_requested=False,
            fine_tuned_model=None,
            trained_tokens=None,
            result_files=[],
        ),
    )
    if result.rowcount != 1:
        raise Conflict(
            f"Job {job.id} is {job.status}; only a failed or cancelled job can be retried",
            param="fine_tuning_job_id",
            code="job_not_retryable",
        )
    step = latest.step_number if latest else None
    where = (
        f"from its checkpoint at step {step}"
        if step is not None
        else "from the beginning (no checkpoint)"
    )
    jobs.add_event(session, job.id, f"Retried by an operator; the job will resume {where}")
    _audit(session, actor, "job.retry", job, resume_step=step)
    session.refresh(job)
    return job, step


def requeue(
    session: Session,
    job_id: str,
    actor: Actor,
    pool: str | None = None,
    declared_pools: Mapping[str, int | None] | None = None,
) -> Job:
    """A running job goes back to the queue at once (its worker is fenced off and stops; the
    job resumes from its last checkpoint); a queued one is re-sent. ``pool`` moves it."""
    job = find_job(session, job_id)
    values: dict = {
        "status": JobStatus.QUEUED,
        "worker": None,
        "lease_expires_at": None,
        "estimated_finish": None,
        "published_at": None,
        "pause_requested": False,
    }
    if pool is not None:
        capacities = pools.pool_capacities(session, declared_pools)
        values["pool"] = pools.check_requested_pool(capacities, pool)
    before = job.status
    result = execute_dml(
        session,
        update(Job)
        .where(Job.id == job.id, Job.status.in_((JobStatus.QUEUED, JobStatus.RUNNING)))
        .values(**values),
    )
    if result.rowcount != 1:
        raise Conflict(
            f"Job {job.id} is {job.status}; only a queued or running job can be re-queued",
            param="fine_tuning_job_id",
            code="job_not_requeueable",
        )
    moved = f" to pool {values['pool']}" if pool is not None else ""
    jobs.add_event(
        session,
        job.id,
        f"Re-queued by an operator{moved}"
        + ("; it will continue from its last checkpoint" if before == JobStatus.RUNNING else ""),
        level="warn" if before == JobStatus.RUNNING else "info",
    )
    _audit(session, actor, "job.requeue", job, previous_status=before, pool=pool)
    session.refresh(job)
    return job


def set_priority(session: Session, job_id: str, priority: int, actor: Actor) -> Job:
    """Change a job's priority (higher runs first); it applies at the next dispatch."""
    if not -MAX_PRIORITY <= priority <= MAX_PRIORITY:
        raise InvalidRequest(
            f"priority must be between {-MAX_PRIORITY} and {MAX_PRIORITY}",
            param="priority",
            code="invalid_priority",
        )
    job = find_job(session, job_id)
    before = job.priority
    result = execute_dml(
        session,
        update(Job)
        .where(Job.id == job.id, Job.status.in_(NON_FINAL_STATUSES))
        .values(priority=priority),
    )
    if result.rowcount != 1:
        raise Conflict(
            f"Job {job.id} has already {job.status}; its priority no longer matters",
            param="fine_tuning_job_id",
            code="job_finished",
        )
    jobs.add_event(session, job.id, f"Priority changed from {before} to {priority} by an operator")
    _audit(session, actor, "job.priority", job, previous=before, priority=priority)
    session.refresh(job)
    return job


def bump(session: Session, job_id: str, actor: Actor) -> Job:
    """Move a waiting job to the front of its pool: priority above every other queued job."""
    job = find_job(session, job_id)
    if job.status not in WAITING:
        raise Conflict(
            f"Job {job.id} is {job.status}; only a waiting (validating, queued or "
            "paused) job can be bumped",
            param="fine_tuning_job_id",
            code="job_not_waiting",
        )
    top = session.scalar(
        select(func.max(Job.priority)).where(
            Job.status.in_(WAITING),
            Job.id != job.id,
            func.coalesce(Job.pool, DEFAULT_POOL) == (job.pool or DEFAULT_POOL),
        )
    )
    if top is None or job.priority > top:
        return job
    return set_priority(session, job.id, min(top + 1, MAX_PRIORITY), actor)


def job_dict(session: Session, job: Job, *, events: int = 5) -> dict:
    """What an operator wants to know about a job, as one flat object (times in unix s)."""
    org = session.get(Organization, job.organization_id)
    adapter = job.adapter or {}
    latest = checkpoints.latest_checkpoint(session, job.id)
    recent, _ = jobs.list_events(session, job, limit=events, after=None)

    def unix(value):
        return int(value.timestamp()) if value is not None else None

    return {
        "id": job.id,
        "object": "admin.fine_tuning.job",
        "status": job.status,
        "organization_id": job.organization_id,
        "organization": org.name if org else None,
        "model": job.model,
        "adapter": f"{adapter.get('type', '?')} r{adapter.get('r', '?')}",
        "pool": job.pool or DEFAULT_POOL,
        "priority": job.priority,
        "worker": job.worker,
        "attempt": job.attempt,
        "retries": job.retries,
        "created_at": unix(job.created_at),
        "started_at": unix(job.started_at),
        "finished_at": unix(job.finished_at),
        "fine_tuned_model": job.fine_tuned_model,
        "error": job.error,
        "latest_checkpoint_step": latest.step_number if latest else None,
        "nodes": gangs.job_nodes(job.options),
        # A running multi-node job's hosts: [{"worker", "node_rank", "state"}], leader first.
        "gang": gangs.gang_members(session, [job.id]).get(job.id)
        if job.status == JobStatus.RUNNING
        else None,
        "recent_events": [e.message for e in recent],
    }
