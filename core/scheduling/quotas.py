"""Per-organization job quotas: ``max_queued_jobs`` is checked when a job is created,
``max_running_jobs`` when one is dispatched (core.scheduling.dispatch). None means unlimited."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from core.db.models import Job, Organization
from core.errors import QuotaExceeded
from core.jobs.status import WAITING_STATUSES


def count_jobs(session: Session, org_id: str, statuses: tuple[str, ...]) -> int:
    return (
        session.scalar(
            select(func.count())
            .select_from(Job)
            .where(Job.organization_id == org_id, Job.status.in_(statuses))
        )
        or 0
    )


def check_can_queue(session: Session, org_id: str) -> None:
    """Raise QuotaExceeded when ``org_id`` already has ``max_queued_jobs`` jobs waiting."""
    # The organization row is usually in the session already (the storage quota read it).
    org = session.get(Organization, org_id)
    if org is None or org.max_queued_jobs is None:
        return
    # Lock the organization row: two concurrent creations cannot both take the last slot.
    limit = session.scalar(
        select(Organization.max_queued_jobs).where(Organization.id == org_id).with_for_update()
    )
    if limit is None:
        return
    waiting = count_jobs(session, org_id, WAITING_STATUSES)
    if waiting >= limit:
        raise QuotaExceeded(
            f"Your organization has {waiting} queued job(s), its limit (max_queued_jobs) is "
            f"{limit}. Wait for queued jobs to start, or cancel some, before creating more.",
            param=None,
            code="quota_exceeded",
        )
