"""Checkpoints: a job's saved training states, newest step first, the last N kept."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from core import ids
from core.db.models import Checkpoint, Job
from core.errors import InvalidRequest, NotFound
from core.jobs.lifecycle import fine_tuned_model_name, still_ours
from core.timeutil import utcnow
from core.webhooks import events as webhook_events
from core.webhooks.outbox import emit_job_event

DEFAULT_KEEP = 3


def checkpoint_prefix(job_id: str, step: int) -> str:
    return f"jobs/{job_id}/checkpoints/step-{step:08d}"


def checkpoint_model_name(session: Session, job: Job, step: int) -> str:
    return f"{fine_tuned_model_name(session, job)}:ckpt-step-{step}"


def record_checkpoint(
    session: Session,
    job_id: str,
    attempt: int,
    *,
    step: int,
    epoch: int,
    reason: str,
    metrics: dict[str, Any],
    storage_prefix: str,
    adapter_key: str,
) -> tuple[Checkpoint | None, list[str]]:
    """Record an uploaded checkpoint (fenced by attempt) and drop the oldest beyond the job's
    ``keep_checkpoints``. Returns the row (None if fenced off) and storage prefixes to delete."""
    if not still_ours(session, job_id, attempt):
        return None, []
    job = session.get_one(Job, job_id)  # still_ours found it
    existing = session.scalar(
        select(Checkpoint).where(Checkpoint.job_id == job_id, Checkpoint.step_number == step)
    )
    if existing is not None:  # the same step saved again (e.g. pause right at an epoch end)
        session.delete(existing)
        session.flush()
    row = Checkpoint(
        id=ids.checkpoint_id(),
        job_id=job_id,
        step_number=step,
        epoch=epoch,
        reason=reason,
        metrics=metrics,
        storage_prefix=storage_prefix,
        adapter_key=adapter_key,
        created_at=utcnow(),
    )
    session.add(row)
    session.flush()
    emit_job_event(session, job_id, webhook_events.CHECKPOINT)
    keep = int((job.options or {}).get("keep_checkpoints", DEFAULT_KEEP))
    rows = list(
        session.scalars(
            select(Checkpoint)
            .where(Checkpoint.job_id == job_id)
            .order_by(Checkpoint.step_number.desc())
        )
    )
    dropped = []
    for old in rows[keep:]:
        dropped.append(old.storage_prefix)
        session.delete(old)
    return row, dropped


def latest_checkpoint(session: Session, job_id: str) -> Checkpoint | None:
    return session.scalar(
        select(Checkpoint)
        .where(Checkpoint.job_id == job_id)
        .order_by(Checkpoint.step_number.desc())
        .limit(1)
    )


def list_checkpoints(
    session: Session, job: Job, *, limit: int, after: str | None
) -> tuple[list[Checkpoint], bool]:
    stmt = select(Checkpoint).where(Checkpoint.job_id == job.id)
    if after:
        cursor = session.get(Checkpoint, after)
        if cursor is None or cursor.job_id != job.id:
            raise InvalidRequest(f"No such checkpoint: {after}", param="after")
        stmt = stmt.where(Checkpoint.step_number < cursor.step_number)
    rows = list(session.scalars(stmt.order_by(Checkpoint.step_number.desc()).limit(limit + 1)))
    return rows[:limit], len(rows) > limit


def get_checkpoint(session: Session, job: Job, checkpoint_id: str) -> Checkpoint:
    row = session.get(Checkpoint, checkpoint_id)
    if row is None or row.job_id != job.id:
        raise NotFound(f"No such checkpoint: {checkpoint_id}", param="checkpoint")
    return row
