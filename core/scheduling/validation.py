"""Fair, leased validation: which ``validating_files`` job a validator takes next.

A validation message is only a wake-up, as a training one is (core.scheduling.dispatch): the
validator then claims, in one transaction, the best waiting job:

1. of the organization a validator served least recently (``organizations.last_validated_at``),
   so that one organization's 40 jobs do not hold back another's one;
2. then the oldest job.

The claim is a lease on the job (``jobs.worker`` and ``jobs.lease_expires_at``) for the
validation time budget plus ``DORADO_LEASE_SECONDS``: no other validator takes the job and the
sweeper does not send it again meanwhile (core.jobs.lifecycle.jobs_to_publish). A lease that
expired means its validator died: the job is taken over and the loss counted as a retry; a job
that keeps killing its validators fails after ``DORADO_MAX_JOB_RETRIES`` of them. On
PostgreSQL the candidate is taken with ``FOR UPDATE SKIP LOCKED``; on SQLite the guarded
update is enough.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, Select, or_, select, update
from sqlalchemy.orm import Session

from core.db.dml import execute_dml
from core.db.models import Job, Organization
from core.jobs import lifecycle as jobs
from core.jobs.status import FailureCode, JobStatus
from core.timeutil import utcnow

# Claims one call tries before giving up (a job given up on, or taken meanwhile on SQLite).
MAX_CANDIDATES = 50


def _free(now: datetime) -> ColumnElement[bool]:
    """Not leased to a validator, or leased to one that stopped renewing."""
    return or_(Job.lease_expires_at.is_(None), Job.lease_expires_at < now)


def _candidate(now: datetime) -> Select:
    return (
        select(Job.id, Job.organization_id, Job.lease_expires_at, Job.retries)
        .join(Organization, Organization.id == Job.organization_id)
        .where(Job.status == JobStatus.VALIDATING_FILES, _free(now))
        .order_by(
            Organization.last_validated_at.asc().nulls_first(),
            Job.created_at.asc(),
            Job.id.asc(),
        )
        .limit(1)
        .with_for_update(of=Job, skip_locked=True)
    )


def claim_next_validation(
    session: Session, *, validator: str, lease_seconds: float, max_retries: int
) -> str | None:
    """Lease the fairest waiting ``validating_files`` job to ``validator`` for
    ``lease_seconds``; its id, or None when no job waits (see the module docstring)."""
    for _ in range(MAX_CANDIDATES):
        now = utcnow()
        row = session.execute(_candidate(now)).first()
        if row is None:
            return None
        job_id, org_id, lease, retries = row
        lost = lease is not None
        if lost and retries >= max_retries:
            jobs.fail_validation(
                session,
                job_id,
                f"The validator working on this job stopped responding {retries + 1} times; "
                "giving up",
                None,
                code=FailureCode.WORKER_LOST,
            )
            continue
        claimed = execute_dml(
            session,
            update(Job)
            .where(Job.id == job_id, Job.status == JobStatus.VALIDATING_FILES, _free(now))
            .values(
                worker=validator,
                lease_expires_at=now + timedelta(seconds=lease_seconds),
                retries=Job.retries + (1 if lost else 0),
            ),
        )
        if claimed.rowcount != 1:  # taken by another validator since the select (SQLite)
            continue
        session.execute(
            update(Organization).where(Organization.id == org_id).values(last_validated_at=now)
        )
        if lost:
            jobs.add_event(
                session,
                job_id,
                "The validator working on this job stopped responding; validating again",
                level="warn",
            )
        return job_id
    return None
