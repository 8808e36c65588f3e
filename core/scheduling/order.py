"""The queue as operators and pollers see it: running jobs, then queued jobs in the order
the dispatch rule (core.scheduling.dispatch) will claim them, with the reason a job is held.

Read-only: nothing here claims or changes a job, so the job services may import it (a
poll shows a queued job's position) without a cycle through the claim path."""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from core.db.models import Job, Organization
from core.jobs.status import JobStatus
from core.scheduling.broker import DEFAULT_POOL
from core.scheduling.gangs import job_nodes, pool_hosts, waiting_for_hosts
from core.timeutil import utcnow


def pool_filter(pool: str):
    """Jobs of ``pool`` (jobs created before pools existed belong to the default pool)."""
    if pool == DEFAULT_POOL:
        return or_(Job.pool == pool, Job.pool.is_(None))
    return Job.pool == pool


@dataclass
class QueueEntry:
    """A queued or running job, with where it stands in the dispatch order of its pool."""

    job: Job
    organization_name: str
    position: int | None = None  # 1 = next to run in its pool; None: running or held
    held: str | None = None  # why a queued job cannot be dispatched now
    waiting: str | None = None  # why a dispatchable multi-node job cannot start yet


@dataclass
class _OrgState:
    running: int
    limit: int | None
    served: float  # last dispatch as a timestamp; -inf = never


def dispatch_order(
    session: Session, pool: str | None = None, *, heartbeat_seconds: float | None = None
) -> list[QueueEntry]:
    """Running jobs, then queued jobs in the order workers will claim them, per pool.

    Positions are simulated with the dispatch rule, assuming no running job ends meanwhile:
    each simulated dispatch counts as a running job of its organization. With
    ``heartbeat_seconds`` (what tells a live worker), a multi-node job that its pool's free
    hosts cannot start now says so (``waiting``); smaller jobs may pass it meanwhile."""
    stmt = (
        select(Job, Organization)
        .join(Organization, Organization.id == Job.organization_id)
        .where(Job.status.in_((JobStatus.QUEUED, JobStatus.RUNNING)))
    )
    if pool is not None:
        stmt = stmt.where(pool_filter(pool))
    rows = session.execute(stmt.order_by(Job.started_at, Job.created_at, Job.id)).all()
    orgs: dict[str, Organization] = {org.id: org for _, org in rows}
    running_by_org = dict(
        session.execute(
            select(Job.organization_id, func.count())
            .where(Job.status == JobStatus.RUNNING)
            .group_by(Job.organization_id)
        )
        .tuples()
        .all()
    )
    entries = [QueueEntry(job, org.name) for job, org in rows if job.status == JobStatus.RUNNING]
    queued_by_pool: dict[str, list[Job]] = {}
    for job, _ in rows:
        if job.status == JobStatus.QUEUED:
            queued_by_pool.setdefault(job.pool or DEFAULT_POOL, []).append(job)
    hosts = pool_hosts(session, heartbeat_seconds) if heartbeat_seconds is not None else None
    for pool_name in sorted(queued_by_pool):
        queued = queued_by_pool[pool_name]
        state = _org_states(queued, orgs, running_by_org)
        for job, position in _replay(queued, state):
            held = (
                None
                if position is not None
                else (f"organization at max_running_jobs ({state[job.organization_id].limit})")
            )
            waiting = (
                waiting_for_hosts(job_nodes(job.options), pool_name, hosts.get(pool_name, (0, 0)))
                if hosts is not None and position is not None
                else None
            )
            entries.append(
                QueueEntry(
                    job,
                    orgs[job.organization_id].name,
                    position=position,
                    held=held,
                    waiting=waiting,
                )
            )
    return entries


def queue_positions(
    session: Session, pools: set[str], wanted: set[str] | None = None
) -> dict[str, int]:
    """1-based position of every dispatchable queued job of ``pools`` in its pool's dispatch
    order (held jobs are absent). With ``wanted`` (job ids), the replay of a pool stops once
    those are placed: a poll of one queued job does not place the jobs behind it.

    One query reads only the columns the rule needs, with each organization's quota, last
    dispatch and running count, so a dashboard poll does not load every queued job."""
    if not pools:
        return {}
    pool_of = func.coalesce(Job.pool, DEFAULT_POOL)
    running = (
        select(Job.organization_id.label("org_id"), func.count().label("running"))
        .where(Job.status == JobStatus.RUNNING)
        .group_by(Job.organization_id)
        .subquery("running_by_org")
    )
    queued = session.execute(
        select(
            Job.id,
            Job.organization_id,
            Job.priority,
            Job.created_at,
            pool_of.label("pool"),
            Organization.max_running_jobs,
            Organization.last_dispatched_at,
            func.coalesce(running.c.running, 0).label("running"),
        )
        .join(Organization, Organization.id == Job.organization_id)
        .outerjoin(running, running.c.org_id == Job.organization_id)
        .where(Job.status == JobStatus.QUEUED, pool_of.in_(pools))
    ).all()
    state: dict[str, _OrgState] = {}
    for row in queued:
        if row.organization_id not in state:
            state[row.organization_id] = _OrgState(
                running=row.running,
                limit=row.max_running_jobs,
                served=_timestamp(row.last_dispatched_at),
            )
    positions: dict[str, int] = {}
    for pool in pools:
        in_pool = [row for row in queued if row.pool == pool]
        left = None if wanted is None else {row.id for row in in_pool} & wanted
        if left is not None and not left:
            continue
        # Each pool replays from the organizations' real state.
        pool_state = {
            org_id: _OrgState(st.running, st.limit, st.served) for org_id, st in state.items()
        }
        for job, position in _replay(in_pool, pool_state):
            if position is None:
                break  # only held jobs follow
            positions[job.id] = position
            if left is not None:
                left.discard(job.id)
                if not left:
                    break
    return positions


def _org_states(
    queued: list[Job], orgs: dict[str, Organization], running_by_org: dict[str, int]
) -> dict[str, _OrgState]:
    return {
        job.organization_id: _OrgState(
            running=running_by_org.get(job.organization_id, 0),
            limit=orgs[job.organization_id].max_running_jobs,
            served=_timestamp(orgs[job.organization_id].last_dispatched_at),
        )
        for job in queued
    }


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
        return (
            -head.priority,
            state[org_id].running,
            state[org_id].served,
            head.created_at,
            head.id,
        )

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
    since = job.started_at if job.status == JobStatus.RUNNING and job.started_at else job.created_at
    return {
        "object": "queue.entry",
        "position": entry.position,
        "id": job.id,
        "status": job.status,
        "pool": job.pool or DEFAULT_POOL,
        "priority": job.priority,
        "organization_id": job.organization_id,
        "organization": entry.organization_name,
        "model": job.model,
        "adapter": f"{adapter.get('type', '?')} r{adapter.get('r', '?')}",
        "created_at": int(job.created_at.timestamp()),
        "age_seconds": int((now - since).total_seconds()),
        "worker": job.worker,
        "held": entry.held,
        "waiting": entry.waiting,
        "nodes": job_nodes(job.options),
        "hosts": list(job.gang["hosts"])
        if job.status == JobStatus.RUNNING and job.gang and job.gang.get("attempt") == job.attempt
        else None,
    }
