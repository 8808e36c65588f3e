"""The sweeper: lost workers' jobs are re-queued (bounded), lost messages re-published."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import update

from core.db.engine import session_scope
from core.db.models import Job
from core.jobs import lifecycle as jobs
from core.jobs.status import FailureCode
from core.timeutil import utcnow
from tests.core.jobs_support import make_job


def make_running_job(url: str, retries: int) -> str:
    job_id = make_job(url, validated=True)
    with session_scope(url) as session:
        assert jobs.claim_job(session, job_id, "w", lease_seconds=60) == 1
        session.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(retries=retries, lease_expires_at=utcnow() - timedelta(seconds=1))
        )
    return job_id


def test_expired_lease_requeues_then_gives_up(database_url):
    job_id = make_running_job(database_url, retries=0)
    with session_scope(database_url) as session:
        assert jobs.requeue_expired_leases(session, max_retries=1) == [job_id]
    with session_scope(database_url) as session:
        job = session.get(Job, job_id)
        assert (job.status, job.retries, job.worker) == ("queued", 1, None)
        assert jobs.jobs_to_publish(session, republish_after_seconds=60) == [
            (job_id, "queued", "default")
        ]
        assert jobs.claim_job(session, job_id, "w2", lease_seconds=60) == 2
        session.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(lease_expires_at=utcnow() - timedelta(seconds=1))
        )
    with session_scope(database_url) as session:
        assert jobs.requeue_expired_leases(session, max_retries=1) == []
    with session_scope(database_url) as session:
        job = session.get(Job, job_id)
        assert job.status == "failed" and job.error["code"] == FailureCode.WORKER_LOST


def test_stale_worker_cannot_write_after_takeover(database_url):
    job_id = make_running_job(database_url, retries=0)
    with session_scope(database_url) as session:
        jobs.requeue_expired_leases(session, max_retries=3)
    with session_scope(database_url) as session:
        assert jobs.claim_job(session, job_id, "new-worker", lease_seconds=60) == 2
    with session_scope(database_url) as session:  # the old worker (attempt 1) wakes up
        assert not jobs.renew_lease(session, job_id, 1, 60)
        assert not jobs.record_event(session, job_id, 1, "late write")
        assert (
            jobs.succeed_job(session, job_id, 1, trained_tokens=1, adapter_key="x", result_files=[])
            is None
        )
        assert not jobs.fail_job(
            session, job_id, 1, code=FailureCode.INTERNAL_ERROR, message="late"
        )
    with session_scope(database_url) as session:
        job = session.get(Job, job_id)
        assert (job.status, job.attempt, job.worker) == ("running", 2, "new-worker")


def test_duplicate_delivery_claims_once(database_url):
    job_id = make_running_job(database_url, retries=0)
    with session_scope(database_url) as session:
        assert jobs.claim_job(session, job_id, "other", lease_seconds=60) is None
