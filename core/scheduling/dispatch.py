"""Fair dispatch: the database, not the broker's FIFO, decides which queued job runs next.

A Celery message is only a wake-up for a worker of one pool. The worker then claims, in one
transaction, the best eligible queued job of its pool:

1. the highest ``priority`` first;
2. within a priority, the organization with the fewest running jobs, then the organization
   served least recently (``organizations.last_dispatched_at``);
3. then the oldest job.

An organization already running ``max_running_jobs`` jobs is skipped. On PostgreSQL the
candidate row is taken with ``FOR UPDATE SKIP LOCKED`` (concurrent workers never wait on, or
take, the same job) and the organization row is locked while its running jobs are counted,
so two workers cannot both take an organization's last slot. On SQLite (one writer at a time)
the guarded ``status = 'queued'`` update is enough.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Select, func, or_, select, update
from sqlalchemy.orm import Session

from core.db.models import Job, Organization
from core.jobs import lifecycle as jobs
from core.scheduling import quotas, workers
from core.scheduling.broker import DEFAULT_POOL
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


def pool_filter(pool: str):
    """Jobs of ``pool`` (jobs created before pools existed belong to the default pool)."""
    if pool == DEFAULT_POOL:
        return or_(Job.pool == pool, Job.pool.is_(None))
    return Job.pool == pool


def _candidate(pool: str, excluded: set[str]) -> Select:
    running = (select(Job.organization_id.label("org_id"), func.count().label("running"))
               .where(Job.status == "running").group_by(Job.organization_id)
               .subquery("running_by_org"))
    n_running = func.coalesce(running.c.running, 0)
    stmt = (
        select(Job.id, Job.organization_id)
        .join(Organization, Organization.id == Job.organization_id)
        .outerjoin(running, running.c.org_id == Job.organization_id)
        .where(Job.status == "queued", pool_filter(pool),
               or_(Organization.max_running_jobs.is_(None),
                   n_running < Organization.max_running_jobs))
        .order_by(Job.priority.desc(), n_running.asc(),
                  Organization.last_dispatched_at.asc().nulls_first(),
                  Job.created_at.asc(), Job.id.asc())
        .limit(1)
        .with_for_update(of=Job, skip_locked=True)
    )
    if excluded:
        stmt = stmt.where(Job.organization_id.not_in(excluded))
    return stmt


def claim_next(session: Session, *, pool: str, worker: str,
               lease_seconds: int) -> Dispatched | None:
    """Claim the best eligible queued job of ``pool`` for ``worker`` (see the module
    docstring); None when the worker is draining or nothing is eligible."""
    if workers.is_draining(session, worker):
        return None
    excluded: set[str] = set()
    for _ in range(MAX_CANDIDATES):
        row = session.execute(_candidate(pool, excluded)).first()
        if row is None:
            return None
        job_id, org_id = row
        # Locking the organization serializes its dispatches: the count below is exact.
        limit = session.scalar(select(Organization.max_running_jobs)
                               .where(Organization.id == org_id).with_for_update())
        if limit is not None and quotas.count_jobs(session, org_id, ("running",)) >= limit:
            excluded.add(org_id)
            continue
        attempt = jobs.claim_job(session, job_id, worker, lease_seconds)
        if attempt is None:  # taken by another worker since the select (SQLite)
            continue
        session.execute(update(Organization).where(Organization.id == org_id)
                        .values(last_dispatched_at=utcnow()))
        workers.set_current_job(session, worker, job_id)
        return Dispatched(job_id=job_id, attempt=attempt, organization_id=org_id)
    return None


def next_held(session: Session, org_id: str) -> tuple[str, str | None] | None:
    """(id, pool) of the best queued job of an organization that has a ``max_running_jobs``
    quota: when one of its running jobs ends, a worker is woken for it (its own message may
    have been spent while the quota held it back). None without a quota or a queued job."""
    limit = session.scalar(select(Organization.max_running_jobs)
                           .where(Organization.id == org_id))
    if limit is None:
        return None
    row = session.execute(
        select(Job.id, Job.pool).where(Job.organization_id == org_id, Job.status == "queued")
        .order_by(Job.priority.desc(), Job.created_at, Job.id).limit(1)).first()
    return (row[0], row[1]) if row else None


# --- the queue as operators see it ----------------------------------------------------------

@dataclass
class QueueEntry:
    """A queued or running job, with where it stands in the dispatch order of its pool."""

    job: Job
    organization_name: str
    position: int | None = None  # 1 = next to run in its pool; None: running or held
    held: str | None = None  # why a queued job cannot be dispatched now


@dataclass
class _OrgState:
    running: int
    limit: int | None
    served: float  # last dispatch as a timestamp; -inf = never


def dispatch_order(session: Session, pool: str | None = None) -> list[QueueEntry]:
    """Running jobs, then queued jobs in the order workers will claim them, per pool.

    Positions are simulated with the dispatch rule, assuming no running job ends meanwhile:
    each simulated dispatch counts as a running job of its organization."""
    stmt = (select(Job, Organization).join(Organization, Organization.id == Job.organization_id)
            .where(Job.status.in_(("queued", "running"))))
    if pool is not None:
        stmt = stmt.where(pool_filter(pool))
    rows = session.execute(stmt.order_by(Job.started_at, Job.created_at, Job.id)).all()
    orgs: dict[str, Organization] = {org.id: org for _, org in rows}
    running_by_org = dict(session.execute(
        select(Job.organization_id, func.count()).where(Job.status == "running")
        .group_by(Job.organization_id)).tuples().all())
    entries = [QueueEntry(job, org.name) for job, org in rows if job.status == "running"]
    queued_by_pool: dict[str, list[Job]] = {}
    for job, _ in rows:
        if job.status == "queued":
            queued_by_pool.setdefault(job.pool or DEFAULT_POOL, []).append(job)
    for pool_name in sorted(queued_by_pool):
        queued = queued_by_pool[pool_name]
        state = _org_states(queued, orgs, running_by_org)
        for job, position in _replay(queued, state):
            held = None if position is not None else (
                f"organization at max_running_jobs ({state[job.organization_id].limit})")
            entries.append(QueueEntry(job, orgs[job.organization_id].name, position=position,
                                      held=held))
    return entries


def queue_positions(session: Session, pools: set[str],
                    wanted: set[str] | None = None) -> dict[str, int]:
    """1-based position of every dispatchable queued job of ``pools`` in its pool's dispatch
    order (held jobs are absent). With ``wanted`` (job ids), the replay of a pool stops once
    those are placed: a poll of one queued job does not place the jobs behind it.

    One query reads only the columns the rule needs, with each organization's quota, last
    dispatch and running count, so a dashboard poll does not load every queued job."""
    if not pools:
        return {}
    pool_of = func.coalesce(Job.pool, DEFAULT_POOL)
    running = (select(Job.organization_id.label("org_id"), func.count().label("running"))
               .where(Job.status == "running").group_by(Job.organization_id)
               .subquery("running_by_org"))
    queued = session.execute(
        select(Job.id, Job.organization_id, Job.priority, Job.created_at, pool_of.label("pool"),
               Organization.max_running_jobs, Organization.last_dispatched_at,
               func.coalesce(running.c.running, 0).label("running"))
        .join(Organization, Organization.id == Job.organization_id)
        .outerjoin(running, running.c.org_id == Job.organization_id)
        .where(Job.status == "queued", pool_of.in_(pools))).all()
    state: dict[str, _OrgState] = {}
    for row in queued:
        if row.organization_id not in state:
            state[row.organization_id] = _OrgState(running=row.running,
                                                   limit=row.max_running_jobs,
                                                   served=_timestamp(row.last_dispatched_at))
    positions: dict[str, int] = {}
    for pool in pools:
        in_pool = [row for row in queued if row.pool == pool]
        left = None if wanted is None else {row.id for row in in_pool} & wanted
        if left is not None and not left:
            continue
        # Each pool replays from the organizations' real state.
        pool_state = {org_id: _OrgState(st.running, st.limit, st.served)
                      for org_id, st in state.items()}
        for job, position in _replay(in_pool, pool_state):
            if position is None:
                break  # only held jobs follow
            positions[job.id] = position
            if left is not None:
                left.discard(job.id)
                if not left:
                    break
    return positions


def _org_states(queued: list[Job], orgs: dict[str, Organization],
                running_by_org: dict[str, int]) -> dict[str, _OrgState]:
    return {job.organization_id: _OrgState(
                running=running_by_org.get(job.organization_id, 0),
                limit=orgs[job.organization_id].max_running_jobs,
                served=_timestamp(orgs[job.organization_id].last_dispatched_at))
            for job in queued}


def _replay(queued: list, state: dict[str, _OrgState]) -> Iterator[tuple[Any, int | None]]:
    """(job, position) in dispatch order, then (job, None) for each job held by its
    organization's quota. ``state`` (one entry per organization of ``queued``) is updated as
    the simulated dispatches go."""
    by_org: dict[str, deque] = {}
    for job in sorted(queued, key=lambda j: (-j.priority, j.created_at, j.id)):
        by_org.setdefault(job.organization_id, deque()).append(job)

    def eligible(org_id: str) -> bool:
        limit = state[org_id].limit
        return bool(by_org[org_id]) and (limit is None or state[org_id].running < limit)

    def rank(org_id: str) -> tuple:
        head = by_org[org_id][0]
        return (-head.priority, state[org_id].running, state[org_id].served, head.created_at,
                head.id)

    # The claim rule picks the organization whose head job ranks first; only the organization
    # just served changes rank, so a heap replays the rule in O(n log organizations).
    heap = [(rank(org_id), org_id) for org_id in by_org if eligible(org_id)]
    heapq.heapify(heap)
    position, clock = 0, 1e12  # simulated dispatches are later than any real one
    while heap:
        _, best = heapq.heappop(heap)
        # Alone in the running, an organization's jobs go in its own order until its quota.
        while True:
            job = by_org[best].popleft()
            position += 1
            clock += 1
            state[best].running += 1
            state[best].served = clock
            yield job, position
            if heap or not eligible(best):
                break
        if eligible(best):
            heapq.heappush(heap, (rank(best), best))
    for waiting in by_org.values():
        for job in waiting:
            yield job, None


def _timestamp(value: datetime | None) -> float:
    return -math.inf if value is None else value.timestamp()


def queue_entry_dict(entry: QueueEntry, now: datetime | None = None) -> dict:
    """The wire/CLI form of one queue entry."""
    job, now = entry.job, now or utcnow()
    adapter = job.adapter or {}
    since = job.started_at if job.status == "running" and job.started_at else job.created_at
    return {
        "object": "queue.entry", "position": entry.position, "id": job.id,
        "status": job.status, "pool": job.pool or DEFAULT_POOL, "priority": job.priority,
        "organization_id": job.organization_id, "organization": entry.organization_name,
        "model": job.model,
        "adapter": f"{adapter.get('type', '?')} r{adapter.get('r', '?')}",
        "created_at": int(job.created_at.timestamp()),
        "age_seconds": int((now - since).total_seconds()),
        "worker": job.worker, "held": entry.held,
    }
