"""Multi-node jobs: a *gang* of worker hosts that train one job together.

A job with ``nodes`` > 1 (the ``nodes`` extra on creation) runs on that many training workers
of its pool, each a host with its own GPUs. The worker that claims it (core.scheduling.dispatch)
becomes node 0, the *leader*: in the same transaction it books ``nodes - 1`` other live, idle,
undrained workers of the pool, or, if there are not that many, it books none and leaves the job
queued (never half a gang holding GPUs while it waits for the rest). Smaller jobs may pass a
gang job that waits for hosts (backfill; raise its priority to favour it).

A booked worker (a *follower*) learns of its booking on its next wake-up: the leader sends one
to each follower's own queue (:func:`host_queue`), and any wake-up of a booked worker joins the
gang instead of claiming a job. The gang meets at the leader's address and port (``jobs.gang``),
where rank 0's ``torch.distributed`` store runs; only the leader reports progress, writes
checkpoints and changes the job's status. Every host watches the others: the leader gives the
attempt up when a follower does not join in time, stops beating or leaves the gang; a follower
stops when the attempt it joined is over. A lost host therefore fails the attempt on every host,
and the job is re-queued from its last checkpoint (the leader's transient-failure retry, or the
sweeper when the leader itself was lost). A follower that shuts down gracefully does not
vanish: it asks to :func:`leave`, keeps training until the leader has checkpointed and
re-queued the job (no retry counted), then stops. Bookings end together: :func:`release` when the
leader is done, :func:`release_stale` in the sweeper for a leader that vanished.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, exists, func, or_, select, update
from sqlalchemy.orm import Session

from core.db.models import Job, Worker
from core.jobs.planner import MAX_NODES
from core.jobs.status import JobStatus
from core.scheduling.workers import MISSED_HEARTBEATS
from core.timeutil import utcnow

__all__ = ["MAX_NODES", "Booking", "Rendezvous", "book", "free_hosts", "host_queue"]

HOST_QUEUE_PREFIX = "dorado.host."

UNBOOKED: dict[str, Any] = dict.fromkeys(
    ("booked_job_id", "booked_attempt", "node_rank", "joined_at")
)
"""A worker row's gang columns when it is in no gang."""


@dataclass(frozen=True)
class Rendezvous:
    """Where a leader's gang meets, and how many processes each host runs."""

    address: str
    port: int
    ranks_per_node: int


@dataclass(frozen=True)
class Booking:
    """A follower's part in a gang: the job, its attempt, this host's node rank and where the
    gang meets (from the job's ``gang``)."""

    job_id: str
    attempt: int
    node_rank: int
    nodes: int
    rendezvous: Rendezvous
    leader: str


def host_queue(worker: str) -> str:
    """The queue only ``worker`` consumes: wake-ups for its gang bookings."""
    return HOST_QUEUE_PREFIX + re.sub(r"[^A-Za-z0-9_.-]", "_", worker)


def job_nodes(options: dict[str, Any] | None) -> int:
    """The hosts a job runs on (its ``nodes`` option; 1 when absent)."""
    return int((options or {}).get("nodes") or 1)


def _live_since(heartbeat_seconds: float) -> datetime:
    return utcnow() - timedelta(seconds=heartbeat_seconds * MISSED_HEARTBEATS)


def free_hosts(
    session: Session, pool: str, *, leader: str, count: int, heartbeat_seconds: float
) -> list[str]:
    """Up to ``count`` other workers of ``pool`` that could join a gang now (live, idle,
    undrained, unbooked), locked until the transaction ends (others skip them)."""
    stmt = (
        select(Worker.name)
        .where(
            Worker.pool == pool,
            Worker.name != leader,
            Worker.stopped_at.is_(None),
            Worker.draining.is_(False),
            Worker.current_job_id.is_(None),
            Worker.booked_job_id.is_(None),
            Worker.last_heartbeat_at >= _live_since(heartbeat_seconds),
        )
        .order_by(Worker.name)
        .limit(count)
        .with_for_update(skip_locked=True)
    )
    return list(session.scalars(stmt))


def pool_hosts(session: Session, heartbeat_seconds: float) -> dict[str, tuple[int, int]]:
    """Per pool: (live undrained workers, those of them idle and unbooked), the hosts a
    multi-node job of the pool could ever have and could have now."""
    live = (
        select(
            Worker.pool,
            func.count(),
            func.count().filter(Worker.current_job_id.is_(None), Worker.booked_job_id.is_(None)),
        )
        .where(
            Worker.stopped_at.is_(None),
            Worker.draining.is_(False),
            Worker.last_heartbeat_at >= _live_since(heartbeat_seconds),
        )
        .group_by(Worker.pool)
    )
    return {pool: (total, idle) for pool, total, idle in session.execute(live).tuples()}


def waiting_for_hosts(nodes: int, pool: str, hosts: tuple[int, int]) -> str | None:
    """Why a queued job of ``nodes`` hosts cannot start now for want of hosts, or None."""
    live, idle = hosts
    if nodes <= 1 or idle >= nodes:
        return None
    if live < nodes:
        return f"needs {nodes} hosts; pool {pool} has {live} live worker{'s' * (live != 1)}"
    return f"waiting for {nodes} free hosts ({idle} free now)"


def book(
    session: Session,
    job_id: str,
    attempt: int,
    *,
    leader: str,
    followers: list[str],
    rendezvous: Rendezvous,
) -> dict[str, Any]:
    """Book ``followers`` (from :func:`free_hosts`) for the attempt and record the gang on the
    job; returns the gang record."""
    for rank, name in enumerate(followers, start=1):
        session.execute(
            update(Worker)
            .where(Worker.name == name)
            .values(booked_job_id=job_id, booked_attempt=attempt, node_rank=rank, joined_at=None)
        )
    gang = {
        "attempt": attempt,
        "hosts": [leader, *followers],
        "address": rendezvous.address,
        "port": rendezvous.port,
        "ranks_per_node": rendezvous.ranks_per_node,
        "booked_at": int(utcnow().timestamp()),
    }
    session.execute(update(Job).where(Job.id == job_id).values(gang=gang))
    return gang


def booking_of(session: Session, worker: Worker) -> Booking | None:
    """The gang ``worker`` is booked into and has not joined yet, if its attempt still runs."""
    if worker.booked_job_id is None or worker.joined_at is not None:
        return None
    job = session.get(Job, worker.booked_job_id)
    gang = job.gang if job is not None else None
    if (
        job is None
        or gang is None
        or job.status != JobStatus.RUNNING
        or job.attempt != worker.booked_attempt
        or gang.get("attempt") != worker.booked_attempt
    ):
        return None
    return Booking(
        job_id=job.id,
        attempt=job.attempt,
        node_rank=int(worker.node_rank or 0),
        nodes=len(gang["hosts"]),
        rendezvous=Rendezvous(gang["address"], int(gang["port"]), int(gang["ranks_per_node"])),
        leader=gang["hosts"][0],
    )


def mark_joined(session: Session, worker: str, job_id: str, attempt: int) -> bool:
    """The follower starts its part; False when its booking was released meanwhile."""
    result = session.execute(
        update(Worker)
        .where(
            Worker.name == worker,
            Worker.booked_job_id == job_id,
            Worker.booked_attempt == attempt,
        )
        .values(joined_at=utcnow(), current_job_id=job_id, last_heartbeat_at=utcnow())
    )
    return result.rowcount == 1  # type: ignore[attr-defined]


def leave(session: Session, worker: str, job_id: str, attempt: int) -> bool:
    """A follower shutting down asks its leader to checkpoint the attempt and re-queue the job
    (no retry counted), instead of vanishing mid-step. False when the attempt is over."""
    job = session.scalars(select(Job).where(Job.id == job_id).with_for_update()).one_or_none()
    gang = job.gang if job is not None else None
    if (
        job is None
        or not gang
        or job.status != JobStatus.RUNNING
        or job.attempt != attempt
        or gang.get("attempt") != attempt
    ):
        return False
    leaving = list(gang.get("leaving", []))
    if worker not in leaving:
        job.gang = {**gang, "leaving": [*leaving, worker]}  # a new dict: JSON is not tracked
    return True


def release(session: Session, job_id: str, attempt: int | None = None) -> None:
    """End the bookings of a job's gang (of one attempt, or all) together. Hosts that left
    the attempt because they are shutting down keep theirs until they stop (or the sweeper
    ends it): the re-queued job must not book them again meanwhile."""
    where = [Worker.booked_job_id == job_id]
    if attempt is not None:
        where.append(Worker.booked_attempt == attempt)
        gang = session.scalar(select(Job.gang).where(Job.id == job_id)) or {}
        if gang.get("attempt") == attempt and gang.get("leaving"):
            where.append(Worker.name.not_in(gang["leaving"]))
    session.execute(update(Worker).where(*where).values(**UNBOOKED))


def release_member(session: Session, worker: str, job_id: str, attempt: int) -> None:
    """A follower's part ended: its own booking ends (if it still holds it)."""
    session.execute(
        update(Worker)
        .where(
            Worker.name == worker,
            Worker.booked_job_id == job_id,
            Worker.booked_attempt == attempt,
        )
        .values(**UNBOOKED)
    )


def release_stale(session: Session) -> int:
    """End bookings whose attempt no longer runs (its leader was lost and the sweeper
    re-queued the job, or it ended while a follower was away); how many ended. A host that
    left its attempt because it is shutting down keeps its booking until it has stopped, so
    that the re-queued job cannot book it in the meantime."""
    booked = session.execute(
        select(
            Worker.name, Worker.booked_attempt, Worker.stopped_at, Job.status, Job.attempt, Job.gang
        )
        .join(Job, Job.id == Worker.booked_job_id, isouter=True)
        .where(Worker.booked_job_id.is_not(None))
    ).all()
    ending = [
        row.name
        for row in booked
        if (row.status != JobStatus.RUNNING or row.attempt != row.booked_attempt)
        and not _left_gracefully(row.name, row.booked_attempt, row.stopped_at, row.gang)
    ]
    if not ending:
        return 0
    running = exists().where(
        Job.id == Worker.booked_job_id,
        Job.status == JobStatus.RUNNING,
        Job.attempt == Worker.booked_attempt,
    )
    result = session.execute(
        update(Worker)
        .where(Worker.name.in_(ending), Worker.booked_job_id.is_not(None), ~running)
        .values(**UNBOOKED)
        .execution_options(synchronize_session=False)
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


def _left_gracefully(
    name: str, attempt: int | None, stopped_at: datetime | None, gang: dict[str, Any] | None
) -> bool:
    """Whether a host left ``attempt`` of its gang to shut down and has not stopped yet."""
    if stopped_at is not None or not gang or gang.get("attempt") != attempt:
        return False
    return name in gang.get("leaving", [])


def follower_problem(
    session: Session,
    job_id: str,
    attempt: int,
    *,
    heartbeat_seconds: float,
    join_deadline: datetime,
) -> str | None:
    """What the leader should give the attempt up for, or None while every follower is
    there: a follower that left the gang (its booking ended: restarted, released), stopped
    beating, stopped, or has not joined by ``join_deadline``."""
    job = session.get(Job, job_id)
    gang = (job.gang if job is not None else None) or {}
    followers = list(gang.get("hosts", [])[1:])
    if not followers:
        return None
    rows = {w.name: w for w in session.scalars(select(Worker).where(Worker.name.in_(followers)))}
    live_since = _live_since(heartbeat_seconds)
    now = utcnow()
    for name in followers:
        row = rows.get(name)
        if row is None or row.booked_job_id != job_id or row.booked_attempt != attempt:
            return f"host {name} left the job's gang (restarted or released)"
        if row.stopped_at is not None:
            return f"host {name} stopped"
        if row.last_heartbeat_at < live_since:
            return f"host {name} stopped answering (no heartbeat for {_ago(row, now)} s)"
        if row.joined_at is None and now > join_deadline:
            return f"host {name} did not join the job in time"
    return None


def attempt_problem(
    session: Session, job_id: str, attempt: int, *, heartbeat_seconds: float
) -> str | None:
    """What a follower should stop for, or None: the attempt it joined is over (the job left
    ``running`` or was claimed again), or the leader stopped beating."""
    job = session.get(Job, job_id)
    if job is None or job.status != JobStatus.RUNNING or job.attempt != attempt:
        return f"attempt {attempt} of job {job_id} is over"
    leader = (job.gang or {}).get("hosts", [None])[0]
    row = session.get(Worker, leader) if leader else None
    if row is not None and (
        row.stopped_at is not None or row.last_heartbeat_at < _live_since(heartbeat_seconds)
    ):
        return f"the job's first host {leader} was lost"
    return None


def _ago(row: Worker, now: datetime) -> int:
    return int((now - row.last_heartbeat_at).total_seconds())


def gang_members(session: Session, job_ids: list[str]) -> dict[str, list[dict[str, Any]]]:
    """Each multi-node job's hosts as operators see them: name, node rank, joined or not."""
    if not job_ids:
        return {}
    out: dict[str, list[dict[str, Any]]] = {}
    jobs = session.execute(select(Job.id, Job.gang, Job.attempt).where(Job.id.in_(job_ids)))
    for job_id, gang, attempt in jobs:
        if not gang or gang.get("attempt") != attempt:
            continue
        hosts = list(gang.get("hosts", []))
        rows = {
            w.name: w
            for w in session.scalars(
                select(Worker).where(
                    Worker.name.in_(hosts),
                    or_(
                        Worker.current_job_id == job_id,
                        and_(Worker.booked_job_id == job_id, Worker.booked_attempt == attempt),
                    ),
                )
            )
        }
        out[job_id] = [
            {
                "worker": name,
                "node_rank": rank,
                "state": "leader"
                if rank == 0
                else ("joined" if rows.get(name) and rows[name].joined_at else "booked"),
            }
            for rank, name in enumerate(hosts)
            if name in rows
        ]
    return out
