"""Training progress and queue positions of jobs, computed in bulk for job listings; the
worker's estimated finish.

Jobs read with :func:`latest_metrics_column` (a poll, a listed page) bring their latest
metrics event along in the same query; others cost one query for the latest metrics event of
every loaded job whatever their number. The dispatch order costs one more query, only when
a queued job is shown.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from functools import cache
from typing import Any, cast

from sqlalchemy import CursorResult, ScalarSelect, func, select, update
from sqlalchemy.orm import Session, object_session

from core.db.models import Job, JobEvent
from core.jobs.status import JobStatus
from core.scheduling import order as queue_order
from core.scheduling.broker import DEFAULT_POOL

_CACHE_KEY = "dorado.progress"
_METRICS_KEY = "dorado.latest_metrics"


def latest_metrics(session: Session, job_ids: list[str]) -> dict[str, dict[str, Any]]:
    """The ``data`` of the newest metrics event of each job (jobs without one are absent)."""
    if not job_ids:
        return {}
    newest = (
        select(func.max(JobEvent.seq).label("seq"))
        .where(JobEvent.job_id.in_(job_ids), JobEvent.type == "metrics")
        .group_by(JobEvent.job_id)
        .subquery()
    )
    rows = session.execute(
        select(JobEvent.job_id, JobEvent.data).join(newest, JobEvent.seq == newest.c.seq)
    )
    return {job_id: data for job_id, data in rows if isinstance(data, dict)}


@cache
def latest_metrics_column() -> ScalarSelect[Any]:
    """The ``data`` of a job's newest metrics event (NULL without one), as a column to read
    next to ``Job``: ``select(Job, latest_metrics_column())``. Then hand the rows to
    :func:`remember_latest_metrics` so serializing the jobs needs no query of its own.
    Built once: constructing the statement costs more than executing its cached form."""
    return (
        select(JobEvent.data)
        .where(JobEvent.job_id == Job.id, JobEvent.type == "metrics")
        .order_by(JobEvent.seq.desc())
        .limit(1)
        .correlate(Job)
        .scalar_subquery()
    )


def remember_latest_metrics(session: Session, rows: Iterable[tuple[Job, Any]]) -> list[Job]:
    """Keep the metrics read by :func:`latest_metrics_column` for :func:`progress_fields`
    (for the session's lifetime: one request); return the jobs."""
    known: dict[str, dict[str, Any] | None] = session.info.setdefault(_METRICS_KEY, {})
    jobs = []
    for job, data in rows:
        known[job.id] = data if isinstance(data, dict) else None
        jobs.append(job)
    return jobs


def queue_positions(session: Session, jobs: Iterable[Job]) -> dict[str, int]:
    """1-based position of each queued job in its pool's dispatch order (core.scheduling.order):
    what a user sees is the order workers will really follow."""
    queued = [job for job in jobs if job.status == JobStatus.QUEUED]
    pools = {job.pool or DEFAULT_POOL for job in queued}
    return queue_order.queue_positions(session, pools, {job.id for job in queued}) if pools else {}


def progress_of(data: dict[str, Any] | None) -> dict[str, Any] | None:
    """``{"step", "total_steps", "percent"}`` from a metrics event's data, or None."""
    if not data:
        return None
    step, total = data.get("step"), data.get("total_steps")
    if not isinstance(step, int | float) or not isinstance(total, int | float) or total <= 0:
        return None
    percent = round(100.0 * min(step, total) / total, 1)
    return {"step": int(step), "total_steps": int(total), "percent": percent}


def progress_fields(job: Job) -> dict[str, Any]:
    """``progress`` and ``queue_position`` of a job, for its wire object.

    Serializers see one job at a time, so the first call computes the fields for every job
    loaded in the same session (a listed page is all there) and caches them in the session,
    keyed by id and status so a status change within the request recomputes them.
    """
    session = object_session(job)
    if session is None:
        return {"progress": None, "queue_position": None}
    cache: dict[tuple[str, str], dict[str, Any]] = session.info.setdefault(_CACHE_KEY, {})
    key = (job.id, job.status)
    if key not in cache:
        # Only jobs whose columns are loaded: touching an expired one would cost a query each.
        loaded = [
            obj
            for obj in list(session.identity_map.values())
            if isinstance(obj, Job)
            and "status" in obj.__dict__
            and (obj.id, obj.status) not in cache
        ]
        if job not in loaded:
            loaded.append(job)
        known = session.info.get(_METRICS_KEY, {})
        metrics = {job_id: data for job_id, data in known.items() if data is not None}
        missing = [j.id for j in loaded if j.id not in known]
        if missing:
            metrics.update(latest_metrics(session, missing))
        positions = queue_positions(session, loaded)
        for item in loaded:
            progress = progress_of(metrics.get(item.id))
            if item.status == JobStatus.SUCCEEDED and progress:
                progress = {**progress, "step": progress["total_steps"], "percent": 100.0}
            cache[(item.id, item.status)] = {
                "progress": progress,
                "queue_position": positions.get(item.id),
            }
    return dict(cache[key])


def record_estimated_finish(
    session: Session, job_id: str, attempt: int, estimated_finish: datetime
) -> bool:
    """Store the running attempt's expected finish; False when the job is no longer that
    attempt's (cancelled, paused or taken over), which leaves the job untouched."""
    result = cast(
        CursorResult[Any],
        session.execute(
            update(Job)
            .where(Job.id == job_id, Job.attempt == attempt, Job.status == "running")
            .values(estimated_finish=estimated_finish)
        ),
    )
    return result.rowcount == 1
