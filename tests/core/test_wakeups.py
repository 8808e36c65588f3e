"""Commit, then publish: the one way a unit of work wakes the workers, and the sweeper's use
of it. The broker is Celery's real filesystem transport (or a Redis port nobody listens on)."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.db.engine import new_session, session_scope
from core.db.models import Job
from core.jobs import lifecycle as jobs
from core.scheduling import sweeper
from core.scheduling.wakeups import commit_and_publish
from core.settings import Settings, load_settings
from tests.core.jobs_support import make_job


@pytest.fixture
def settings(database_url, tmp_path, monkeypatch) -> Settings:
    monkeypatch.setenv("DORADO_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DORADO_BROKER_URL", "filesystem://")
    return load_settings().model_copy(update={"database_url": database_url})


def messages(settings: Settings) -> list[Path]:
    folder = settings.broker_folder / "queue"
    return sorted(folder.iterdir()) if folder.exists() else []


def published_at(settings: Settings, job_id: str):
    with session_scope(settings.database_url) as session:
        return session.get(Job, job_id).published_at


def test_commits_then_publishes_a_waiting_job(settings):
    job_id = make_job(settings.database_url, validated=True)
    session = new_session(settings.database_url)
    try:
        job = session.get(Job, job_id)
        job.priority = 5  # uncommitted work of the unit
        assert commit_and_publish(session, settings, [job]) == [job_id]
    finally:
        session.close()
    assert len(messages(settings)) == 1
    with session_scope(settings.database_url) as session:
        job = session.get(Job, job_id)
        assert job.priority == 5 and job.published_at is not None


def test_a_job_no_worker_waits_for_is_committed_but_not_published(settings):
    job_id = make_job(settings.database_url, validated=True)
    with session_scope(settings.database_url) as session:
        job = jobs.cancel_job(session, session.get(Job, job_id).organization_id, job_id)
        assert commit_and_publish(session, settings, [job]) == []
    assert messages(settings) == []
    with session_scope(settings.database_url) as session:
        assert session.get(Job, job_id).status == "cancelled"


def test_a_broker_failure_is_logged_not_raised(settings, caplog):
    job_id = make_job(settings.database_url)  # validating_files: for the validators
    down = settings.model_copy(update={"broker_url": "redis://127.0.0.1:1/0"})
    with session_scope(settings.database_url) as session:
        job = session.get(Job, job_id)
        job.priority = 3
        assert commit_and_publish(session, down, [job]) == []
    assert "could not publish job" in caplog.text
    with session_scope(settings.database_url) as session:
        job = session.get(Job, job_id)
        assert job.priority == 3 and job.published_at is None  # committed; left to the sweeper


def test_sweep_publishes_what_was_never_sent(settings):
    job_id = make_job(settings.database_url, validated=True)
    assert published_at(settings, job_id) is None
    assert sweeper.sweep(settings) == {"requeued": [], "published": [job_id]}
    assert len(messages(settings)) == 1 and published_at(settings, job_id) is not None
    assert sweeper.sweep(settings) == {"requeued": [], "published": []}  # sent recently
