"""The workers registry: each training worker registers on start, refreshes its row with a
heartbeat (and the job it runs), and marks itself stopped on shutdown. Operators drain a
worker (it finishes its current job and claims no new one) and undrain it."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from core.db.dml import execute_dml
from core.db.models import Worker
from core.errors import Conflict, NotFound
from core.timeutil import utcnow

# A worker that missed this many heartbeats is shown as "lost" (it may be hung or killed).
MISSED_HEARTBEATS = 3


@dataclass(frozen=True)
class WorkerInfo:
    """Who a worker process is, as it registers."""

    name: str
    hostname: str
    pid: int
    pool: str
    gpus: int
    gpu_memory_mb: int | None


def register(session: Session, info: WorkerInfo) -> Worker:
    """Insert or refresh the worker's row. A restarted worker with the same name keeps its
    ``draining`` flag: an operator's drain survives a restart."""
    now = utcnow()
    row = session.get(Worker, info.name)
    if row is None:
        row = Worker(name=info.name, draining=False)
        session.add(row)
    row.hostname, row.pid, row.pool = info.hostname, info.pid, info.pool
    row.gpus, row.gpu_memory_mb = info.gpus, info.gpu_memory_mb
    row.current_job_id, row.started_at, row.last_heartbeat_at = None, now, now
    row.stopped_at = None
    # A (re)started worker is in no gang: the leader of one it was in sees it leave.
    row.booked_job_id = row.booked_attempt = row.node_rank = row.joined_at = None
    session.flush()
    return row


def heartbeat(session: Session, name: str, current_job_id: str | None) -> bool | None:
    """Refresh the worker's row; returns its ``draining`` flag (None if it has no row)."""
    session.execute(
        update(Worker)
        .where(Worker.name == name)
        .values(last_heartbeat_at=utcnow(), current_job_id=current_job_id, stopped_at=None)
    )
    return session.scalar(select(Worker.draining).where(Worker.name == name))


def set_current_job(session: Session, name: str, job_id: str | None) -> None:
    session.execute(
        update(Worker)
        .where(Worker.name == name)
        .values(current_job_id=job_id, last_heartbeat_at=utcnow())
    )


def mark_stopped(session: Session, name: str) -> None:
    session.execute(
        update(Worker).where(Worker.name == name).values(stopped_at=utcnow(), current_job_id=None)
    )


def get_worker(session: Session, name: str) -> Worker:
    row = session.get(Worker, name)
    if row is None:
        known = ", ".join(session.scalars(select(Worker.name).order_by(Worker.name))) or "none"
        raise NotFound(
            f"No such worker: {name} (registered: {known})", param="name", code="worker_not_found"
        )
    return row


def set_draining(session: Session, name: str, draining: bool) -> Worker:
    """Drain (True) or undrain (False) a worker. Draining twice is an error the operator sees."""
    row = get_worker(session, name)
    result = execute_dml(
        session,
        update(Worker)
        .where(Worker.name == name, Worker.draining == (not draining))
        .values(draining=draining),
    )
    if result.rowcount != 1:
        raise Conflict(
            f"Worker {name} is already {'draining' if draining else 'not draining'}",
            param="name",
            code="worker_already_draining" if draining else "worker_not_draining",
        )
    session.refresh(row)
    return row


def state(row: Worker, heartbeat_seconds: float, now: datetime | None = None) -> str:
    """``stopped``, ``lost`` (heartbeats missed), ``draining`` (still running a job),
    ``drained`` (draining and idle), ``busy``, ``booked`` (into a multi-node job's gang, not
    started yet) or ``idle``."""
    now = now or utcnow()
    if row.stopped_at is not None:
        return "stopped"
    if now - row.last_heartbeat_at > timedelta(seconds=heartbeat_seconds * MISSED_HEARTBEATS):
        return "lost"
    if row.draining:
        return "draining" if row.current_job_id else "drained"
    if row.current_job_id:
        return "busy"
    return "booked" if row.booked_job_id else "idle"


def forget(session: Session, name: str, heartbeat_seconds: float) -> None:
    """Delete the row of a stopped or lost worker (a live one re-registers, so it is refused;
    a pool with no row left is no longer known unless DORADO_POOLS declares it)."""
    row = get_worker(session, name)
    current = state(row, heartbeat_seconds)
    if current not in ("stopped", "lost"):
        raise Conflict(
            f"Worker {name} is {current}; only a stopped or lost worker can be "
            "forgotten (drain and stop it first)",
            param="name",
            code="worker_alive",
        )
    session.delete(row)
    session.flush()


def list_workers(session: Session, *, include_stopped: bool = True) -> list[Worker]:
    stmt = select(Worker).order_by(Worker.pool, Worker.name)
    if not include_stopped:
        stmt = stmt.where(Worker.stopped_at.is_(None))
    return list(session.scalars(stmt))


def worker_dict(row: Worker, heartbeat_seconds: float) -> dict:
    """The wire/CLI form of one worker."""
    return {
        "object": "worker",
        "name": row.name,
        "state": state(row, heartbeat_seconds),
        "pool": row.pool,
        "hostname": row.hostname,
        "pid": row.pid,
        "gpus": row.gpus,
        "gpu_memory_mb": row.gpu_memory_mb,
        "current_job_id": row.current_job_id,
        "gang": (
            {
                "job_id": row.booked_job_id,
                "node_rank": row.node_rank,
                "joined": row.joined_at is not None,
            }
            if row.booked_job_id
            else None
        ),
        "draining": row.draining,
        "started_at": int(row.started_at.timestamp()),
        "last_heartbeat_at": int(row.last_heartbeat_at.timestamp()),
        "stopped_at": int(row.stopped_at.timestamp()) if row.stopped_at else None,
    }
