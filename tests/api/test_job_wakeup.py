"""Creating and resuming a job: the wire status is the plain string, and the job's message
goes to the broker only once the job is committed (then it is marked as published)."""

from __future__ import annotations

from core.db.engine import session_scope
from core.db.models import Job
from core.settings import load_settings
from tests.api.conftest import Api, chat_examples


def broker_messages(api: Api) -> int:
    folder = api.home / "broker" / "queue"
    return len(list(folder.iterdir())) if folder.exists() else 0


def test_created_job_is_committed_then_published(api: Api):
    file_id = api.upload(chat_examples()).get_json()["id"]
    resp = api.post(
        "/v1/fine_tuning/jobs", {"model": "tiny-random-llama", "training_file": file_id}
    )
    assert resp.status_code == 200
    assert b'"status":"validating_files"' in resp.get_data()
    assert broker_messages(api) == 1
    with session_scope(load_settings().database_url) as session:
        job = session.get(Job, resp.get_json()["id"])
        assert job.status == "validating_files" and job.published_at is not None


def test_paused_job_resumes_with_a_wakeup(api: Api):
    file_id = api.upload(chat_examples()).get_json()["id"]
    job_id = api.post(
        "/v1/fine_tuning/jobs", {"model": "tiny-random-llama", "training_file": file_id}
    ).get_json()["id"]
    with session_scope(load_settings().database_url) as session:
        session.get(Job, job_id).status = "paused"
    resumed = api.post(f"/v1/fine_tuning/jobs/{job_id}/resume", {})
    assert resumed.status_code == 200 and b'"status":"queued"' in resumed.get_data()
    assert broker_messages(api) == 2
