"""A resumed attempt drops the metrics its lost predecessor reported after the checkpoint it
resumes from: every step is in the job's metrics events once."""

from __future__ import annotations

from sqlalchemy import select

from core.db.engine import session_scope
from core.db.models import JobEvent
from core.jobs import lifecycle as jobs
from core.jobs.status import FailureCode
from tests.core.jobs_support import make_job


def metrics_steps(url: str, job_id: str) -> list[int]:
    with session_scope(url) as session:
        events = session.scalars(
            select(JobEvent)
            .where(JobEvent.job_id == job_id, JobEvent.type == "metrics")
            .order_by(JobEvent.seq)
        )
        return [e.data["step"] for e in events]


def report_steps(url: str, job_id: str, attempt: int, steps: range) -> None:
    with session_scope(url) as session:
        for step in steps:
            assert jobs.record_event(
                session, job_id, attempt, f"Step {step}/8", type="metrics", data={"step": step}
            )


def test_resumed_attempt_discards_the_lost_attempts_later_steps(database_url):
    job_id = make_job(database_url, validated=True)
    with session_scope(database_url) as session:
        first = jobs.claim_job(session, job_id, "w1", lease_seconds=60)
    report_steps(database_url, job_id, first, range(1, 6))  # checkpoint at 4, lost at 5
    with session_scope(database_url) as session:
        # The lost attempt discards nothing once another one owns the job.
        assert jobs.requeue_expired_leases(session, max_retries=3) == []
        jobs.retry_after_transient_error(
            session,
            job_id,
            first,
            code=FailureCode.STORAGE_UNAVAILABLE,
            message="503",
            max_retries=3,
        )
        second = jobs.claim_job(session, job_id, "w2", lease_seconds=60)
        assert jobs.discard_replayed_metrics(session, job_id, first, resume_step=0) == []
        assert jobs.discard_replayed_metrics(session, job_id, second, resume_step=4) == [5]
    report_steps(database_url, job_id, second, range(5, 9))
    assert metrics_steps(database_url, job_id) == list(range(1, 9))
    with session_scope(database_url) as session:
        note = session.scalars(
            select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.message.like("Discarded%"))
        ).one()
        assert note.data == {"resume_step": 4, "discarded_steps": [5]}
        # A fresh start (no checkpoint) of a job that reported nothing discards nothing.
        assert jobs.discard_replayed_metrics(session, job_id, second, resume_step=8) == []
