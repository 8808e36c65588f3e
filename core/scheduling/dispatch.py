"""Fair dispatch: the database, not the broker's FIFO, decides which queued job runs next.

A Celery message is only a wake-up for a worker of one pool. The worker then claims, in one
transaction, the best eligible queued job of its pool:

1. the highest ``priority`` first;
2. within a priority, the organization with the fewest running jobs, then the organization
   served least recently (``organizations.last_dispatched_at``);
3. then the oldest job.

An organization already running ``max_running_jobs`` jobs is skipped. A job with ``nodes`` > 1
is claimed only together with enough other idle hosts of the pool (core.scheduling.gangs),
else passed over for now. A worker booked into another's gang joins it instead of claiming.

On PostgreSQL the worker's own row is locked first (a leader booking it and its own claim are
serialized), the candidate row is taken with ``FOR UPDATE SKIP LOCKED`` (concurrent workers
never wait on, or take, the same job) and the organization row is locked while its running
jobs are counted, so two workers cannot both take an organization's last slot. On SQLite
(one writer at a time) the guarded ``status = 'queued'`` update is enough.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Select, func, or_, select, update
from sqlalchemy.orm import Session

from core.db.models import Job, Organization, Worker
from core.jobs import lifecycle as jobs
from core.jobs.status import JobStatus
from core.scheduling import gangs, quotas, workers
from core.scheduling.order import pool_filter
from core.timeutil import utcnow

# How many candidates one claim looks at before giving up (organizations at their quota are
# excluded one by one; on SQLite a job taken by another worker meanwhile is skipped).
MAX_CANDIDATES = 50


@dataclass(frozen=True)
class Dispatched:
    """A job a worker has just claimed."""

    job_id: str
    attempt: int
    organization_id: str
    gang: dict | None = None


def _candidate(pool: str, excluded: set[str], passed: set[str]) -> Select:
    running = (
        select(Job.organization_id.label("org_id"), func.count().label("running"))
        .where(Job.status == JobStatus.RUNNING)
        .group_by(Job.organization_id)
        .subquery("running_by_org")
    )
    n_running = func.coalesce(running.c.running, 0)
    stmt = (
        select(Job.id, Job.organization_id, Job.options)
        .join(Organization, Organization.id == Job.organization_id)
        .outerjoin(running, running.c.org_id == Job.organization_id)
        .where(
            Job.status == JobStatus.QUEUED,
            pool_filter(pool),
            or_(Organization.max_running_jobs.is_(None), n_running < Organization.max_running_jobs),
        )
        .order_by(
            Job.priority.desc(),
            n_running.asc(),
            Organization.last_dispatched_at.asc().nulls_first(),
            Job.created_at.asc(),
            Job.id.asc(),
        )
        .limit(1)
        .with_for_update(of=Job, skip_locked=True)
    )
    if excluded:
        stmt = stmt.where(Job.organization_id.not_in(excluded))
    if passed:
        stmt = stmt.where(Job.id.not_in(passed))
    return stmt


def claim_next(
    session: Session,
    *,
    pool: str,
    worker: str,
    lease_seconds: int,
    heartbeat_seconds: float = 5.0,
    rendezvous: gangs.Rendezvous | None = None,
) -> Dispatched | gangs.Booking | None:
    """Claim the best eligible queued job of ``pool`` for ``worker`` (see the module
    docstring); the worker's gang :class:`~core.scheduling.gangs.Booking` when another host
    booked it; None when the worker is draining or nothing is eligible.

    ``rendezvous`` is where a gang this worker leads would meet (None: it leads none, and
    multi-node jobs are passed over); ``heartbeat_seconds`` tells live hosts from lost ones.
    """
    me = session.scalars(select(Worker).where(Worker.name == worker).with_for_update()).first()
    if me is not None:
        booking = gangs.booking_of(session, me)
        if booking is not None:
            return booking
        if me.draining:
            return None
    excluded: set[str] = set()
    passed: set[str] = set()  # gang jobs without enough free hosts now
    for _ in range(MAX_CANDIDATES):
        row = session.execute(_candidate(pool, excluded, passed)).first()
        if row is None:
            return None
        job_id, org_id, options = row
        nodes = gangs.job_nodes(options)
        followers: list[str] = []
        if nodes > 1:
            if rendezvous is not None:
                followers = gangs.free_hosts(
                    session,
                    pool,
                    leader=worker,
                    count=nodes - 1,
                    heartbeat_seconds=heartbeat_seconds,
                )
            if len(followers) < nodes - 1:
                passed.add(job_id)
                continue
        # Locking the organization serializes its dispatches: the count below is exact.
        limit = session.scalar(
            select(Organization.max_running_jobs).where(Organization.id == org_id).with_for_update()
        )
        if limit is not None and quotas.count_jobs(session, org_id, (JobStatus.RUNNING,)) >= limit:
            excluded.add(org_id)
            continue
        attempt = jobs.claim_job(session, job_id, worker, lease_seconds)
        if attempt is None:  # taken by another worker since the select (SQLite)
            continue
        session.execute(
            update(Organization)
            .where(Organization.id == org_id)
            .values(last_dispatched_at=utcnow())
        )
        workers.set_current_job(session, worker, job_id)
        gang = None
        if followers and rendezvous is not None:
            gang = gangs.book(
                session,
                job_id,
                attempt,
                leader=worker,
                followers=followers,
                rendezvous=rendezvous,
            )
            jobs.add_event(
                session,
                job_id,
                f"Running on {nodes} hosts: {', '.join(gang['hosts'])} (the first leads; "
                f"they meet at {rendezvous.address}:{rendezvous.port})",
            )
        return Dispatched(job_id=job_id, attempt=attempt, organization_id=org_id, gang=gang)
    return None


def next_held(session: Session, org_id: str) -> tuple[str, str | None] | None:
    """(id, pool) of the best queued job of an organization that has a ``max_running_jobs``
    quota: when one of its running jobs ends, a worker is woken for it (its own message may
    have been spent while the quota held it back). None without a quota or a queued job."""
    limit = session.scalar(select(Organization.max_running_jobs).where(Organization.id == org_id))
    if limit is None:
        return None
    row = session.execute(
        select(Job.id, Job.pool)
        .where(Job.organization_id == org_id, Job.status == JobStatus.QUEUED)
        .order_by(Job.priority.desc(), Job.created_at, Job.id)
        .limit(1)
    ).first()
    return (row[0], row[1]) if row else None
