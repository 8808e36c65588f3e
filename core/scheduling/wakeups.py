"""Commit, then wake the workers: how every unit of work (an API request, an admin command,
a validator task, a sweep) hands the jobs it put in the queue to the broker.

A worker must never get a message for a job it cannot read yet, so the message goes out only
after the commit. A broker that is down is logged, never raised: the job is safe in the
database, and the sweeper (core.scheduling.sweeper) sends whatever was never marked as
published.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Protocol

from sqlalchemy.orm import Session

from core.jobs.lifecycle import mark_published
from core.jobs.status import WAITING_STATUSES
from core.scheduling.broker import publish_for_status
from core.settings import Settings

log = logging.getLogger(__name__)


class WaitingJob(Protocol):
    """What a wake-up needs of a job: a ``Job`` row, or a row of ``(id, status, pool)``."""

    @property
    def id(self) -> str: ...

    @property
    def status(self) -> str: ...

    @property
    def pool(self) -> str | None: ...


def commit_and_publish(
    session: Session, settings: Settings, jobs: Iterable[WaitingJob] = ()
) -> list[str]:
    """Commit ``session``; then send each of ``jobs`` that waits for a worker (its files to
    validate, or queued) its message, and record that in a transaction of its own.

    Returns the ids of the jobs published. A job whose message could not be sent is logged
    and left to the next sweep; the commit itself raises as usual.
    """
    waiting = [(job.id, job.status, job.pool) for job in jobs if job.status in WAITING_STATUSES]
    session.commit()
    published = []
    for job_id, status, pool in waiting:
        try:
            publish_for_status(settings, job_id, status, pool)
            mark_published(session, job_id)
            session.commit()
        except Exception:
            session.rollback()
            log.warning(
                "could not publish job %s now; the sweeper will send it", job_id, exc_info=True
            )
            continue
        published.append(job_id)
    return published
