"""``dorado-admin jobs show|cancel|retry|requeue|priority|bump ID``: any organization's job."""

from __future__ import annotations

from datetime import datetime, timezone

import click

from admin.context import AdminContext, pass_admin
from admin.output import emit_object, handle_errors, json_option
from core.jobs import admin as job_admin
from core.jobs.admin import Actor
from core.scheduling.broker import DEFAULT_POOL
from core.scheduling.wakeups import commit_and_publish


def _show(
    admin: AdminContext, job_id: str, as_json: bool, message: str | None = None, **extra
) -> None:
    with admin.session() as session:
        out = job_admin.job_dict(session, job_admin.find_job(session, job_id))
    if message is not None:
        out = {"message": message, **extra, **out}
    if not as_json:  # readable times for people
        out = {
            k: (datetime.fromtimestamp(v, timezone.utc) if k.endswith("_at") and v else v)
            for k, v in out.items()
        }
    emit_object(out, as_json=as_json, title=None if as_json else f"Job {job_id}")


@click.group("jobs")
def jobs_group() -> None:
    """Inspect and steer any organization's jobs."""


@jobs_group.command("show")
@click.argument("job_id")
@json_option
@pass_admin
@handle_errors
def show(admin: AdminContext, job_id: str, as_json: bool) -> None:
    """A job: status, organization, pool, priority, worker, latest checkpoint, events."""
    _show(admin, job_id, as_json)


@jobs_group.command("cancel")
@click.argument("job_id")
@json_option
@pass_admin
@handle_errors
def cancel(admin: AdminContext, job_id: str, as_json: bool) -> None:
    """Cancel a queued, running or paused job."""
    with admin.session() as session:
        job_admin.cancel(session, job_id, Actor(admin.actor))
    _show(admin, job_id, as_json, f"Cancelled {job_id}")


@jobs_group.command("retry")
@click.argument("job_id")
@json_option
@pass_admin
@handle_errors
def retry(admin: AdminContext, job_id: str, as_json: bool) -> None:
    """Re-queue a failed or cancelled job; it resumes from its latest checkpoint if any."""
    with admin.session() as session:
        job, step = job_admin.retry(session, job_id, Actor(admin.actor))
        commit_and_publish(session, admin.settings, [job])
    where = f"resumes from step {step}" if step is not None else "starts from the beginning"
    _show(admin, job_id, as_json, f"Retrying {job_id}: it {where}", resume_step=step)


@jobs_group.command("requeue")
@click.argument("job_id")
@click.option("--pool", default=None, help="Move the job to this worker pool.")
@json_option
@pass_admin
@handle_errors
def requeue(admin: AdminContext, job_id: str, pool: str | None, as_json: bool) -> None:
    """Put a queued or running job back in the queue (a running one continues from its last
    checkpoint on the next worker), optionally in another pool."""
    with admin.session() as session:
        job = job_admin.requeue(
            session,
            job_id,
            Actor(admin.actor),
            pool=pool,
            declared_pools=admin.settings.declared_pools,
        )
        commit_and_publish(session, admin.settings, [job])
    _show(admin, job_id, as_json, f"Re-queued {job_id} in pool {job.pool or DEFAULT_POOL}")


@jobs_group.command("priority")
@click.argument("job_id")
@click.argument("priority", type=int)
@json_option
@pass_admin
@handle_errors
def priority(admin: AdminContext, job_id: str, priority: int, as_json: bool) -> None:
    """Set a job's priority (default 0; higher is dispatched first, negative is allowed)."""
    with admin.session() as session:
        job_admin.set_priority(session, job_id, priority, Actor(admin.actor))
    _show(admin, job_id, as_json, f"Priority of {job_id} is now {priority}")


@jobs_group.command("bump")
@click.argument("job_id")
@json_option
@pass_admin
@handle_errors
def bump(admin: AdminContext, job_id: str, as_json: bool) -> None:
    """Move a waiting job to the front of its pool (priority above every other waiting job)."""
    with admin.session() as session:
        job = job_admin.bump(session, job_id, Actor(admin.actor))
    _show(
        admin,
        job_id,
        as_json,
        f"{job_id} is first in pool {job.pool or DEFAULT_POOL} (priority {job.priority})",
    )
