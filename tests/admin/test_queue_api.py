"""The scheduling side of the API: the queued-jobs quota answers 429 at creation, pools are
chosen or validated, and the /v1/admin queue, workers and job endpoints steer dispatch."""

from __future__ import annotations

import pytest

from api import create_app
from api.openapi_queue import AdminJob, QueueList, WorkerList
from core.bootstrap import prepare_database
from core.db.engine import session_scope
from core.db.models import Organization
from core.scheduling import workers
from core.settings import load_settings
from tests.admin.helpers import make_job, make_org
from tests.api.conftest import API_KEY, Api, chat_examples


@pytest.fixture
def api(tmp_path, monkeypatch, postgres_url) -> Api:
    """The API in-process on PostgreSQL; its bootstrap key is an operator admin key."""
    monkeypatch.setenv("DORADO_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DORADO_BOOTSTRAP_API_KEY", API_KEY)
    monkeypatch.setenv("DORADO_DATABASE_URL", postgres_url)
    settings = load_settings()
    prepare_database(settings)
    app = create_app(settings)
    return Api(app.test_client(), settings.home, {"Authorization": f"Bearer {API_KEY}"})


def _create(api: Api, file_id: str, **extra):
    return api.post(
        "/v1/fine_tuning/jobs", {"model": "tiny-random-llama", "training_file": file_id, **extra}
    )


def test_max_queued_jobs_answers_429_quota_exceeded(api: Api, postgres_url):
    file_id = api.upload(chat_examples(12)).get_json()["id"]
    with session_scope(postgres_url) as session:
        org = session.query(Organization).one()
        org.max_queued_jobs = 2
    assert _create(api, file_id).status_code == 200
    assert _create(api, file_id).status_code == 200
    third = _create(api, file_id)
    assert third.status_code == 429
    error = third.get_json()["error"]
    assert error["code"] == "quota_exceeded"
    assert "limit (max_queued_jobs) is 2" in error["message"]
    first = api.get("/v1/fine_tuning/jobs").get_json()["data"][-1]["id"]
    assert api.post(f"/v1/fine_tuning/jobs/{first}/cancel", {}).status_code == 200
    assert _create(api, file_id).status_code == 200  # a slot freed


def test_pool_extra_field(api: Api, postgres_url):
    file_id = api.upload(chat_examples(12)).get_json()["id"]
    unknown = _create(api, file_id, pool="h100")
    assert unknown.status_code == 400
    assert unknown.get_json()["error"]["code"] == "unknown_pool"
    with session_scope(postgres_url) as session:
        workers.register(session, workers.WorkerInfo("g@h", "h", 1, "h100", 8, 81_000))
    job = _create(api, file_id, pool="h100").get_json()
    assert api.get(f"/v1/admin/jobs/{job['id']}").get_json()["pool"] == "h100"
    # Without the field: the smallest GPU pool whose memory fits the model.
    auto = _create(api, file_id).get_json()
    assert api.get(f"/v1/admin/jobs/{auto['id']}").get_json()["pool"] == "h100"


def test_admin_queue_priority_bump_requeue_and_workers(api: Api, postgres_url):
    with session_scope(postgres_url) as session:
        other = make_org(session, "other")
        first, second = make_job(session, other), make_job(session, other)
        workers.register(session, workers.WorkerInfo("w1@h", "h", 1, "default", 0, None))
    QueueList.model_validate(api.get("/v1/admin/queue").get_json(), strict=True)
    queue = api.get("/v1/admin/queue").get_json()["data"]
    assert [(e["id"], e["position"]) for e in queue] == [(first, 1), (second, 2)]

    bumped = api.post(f"/v1/admin/jobs/{second}/bump", {}).get_json()
    AdminJob.model_validate(bumped, strict=True)
    assert bumped["priority"] == 1
    assert api.get("/v1/admin/queue").get_json()["data"][0]["id"] == second
    assert api.post(f"/v1/admin/jobs/{first}/priority", {"priority": 7}).get_json()["priority"] == 7
    assert api.get("/v1/admin/queue").get_json()["data"][0]["id"] == first
    bad = api.post(f"/v1/admin/jobs/{first}/priority", {"priority": "high"})
    assert bad.status_code == 400 and bad.get_json()["error"]["param"] == "priority"
    assert api.post(f"/v1/admin/jobs/{first}/requeue", {}).get_json()["status"] == "queued"
    not_retryable = api.post(f"/v1/admin/jobs/{first}/retry", {})
    assert not_retryable.status_code == 400
    assert not_retryable.get_json()["error"]["code"] == "job_not_retryable"
    assert api.post("/v1/admin/jobs/ftjob-nope/bump", {}).status_code == 404

    drained = api.post("/v1/admin/workers/w1@h/drain", {}).get_json()
    assert (drained["name"], drained["draining"], drained["state"]) == ("w1@h", True, "drained")
    again = api.post("/v1/admin/workers/w1@h/drain", {})
    assert again.status_code == 400
    WorkerList.model_validate(api.get("/v1/admin/workers").get_json(), strict=True)
    listed = api.get("/v1/admin/workers").get_json()["data"]
    assert [w["name"] for w in listed] == ["w1@h"]
    assert api.post("/v1/admin/workers/w1@h/undrain", {}).get_json()["draining"] is False
    assert api.post("/v1/admin/workers/nobody/drain", {}).status_code == 404

    actions = [e["action"] for e in api.get("/v1/admin/audit").get_json()["data"]]
    assert {"job.priority", "job.requeue", "worker.drain", "worker.undrain"} <= set(actions)
