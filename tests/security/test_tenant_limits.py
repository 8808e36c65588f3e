"""Operator limits hold against a tenant (issue 21): options bounded by the operator's caps,
a default queue cap, a cap on keys, a rate limit per organization, and every stored byte
(files, checkpoints, adapters, merged exports) in the storage quota."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from tests.conftest import MODEL_CACHE
from tests.security.conftest import chat_lines, upload
from tests.security.helpers import make_app


def _job_body(file_id: str, **extra) -> dict:
    return {"model": "tiny-random-llama", "training_file": file_id, **extra}


def _training_file(api) -> str:
    resp = upload(api.client, api.headers, chat_lines(10, "caps"))
    assert resp.status_code == 200, resp.get_json()
    return resp.get_json()["id"]


def test_max_run_seconds_is_bounded_by_the_operators_cap(monkeypatch, tmp_path):
    api = make_app(monkeypatch, tmp_path / "home", DORADO_MAX_JOB_SECONDS="600")
    file_id = _training_file(api)
    for asked in (601, 10**30):
        resp = api.client.post(
            "/v1/fine_tuning/jobs",
            headers=api.headers,
            json=_job_body(file_id, max_run_seconds=asked),
        )
        assert resp.status_code == 400, resp.get_json()
        err = resp.get_json()["error"]
        assert err["param"] == "max_run_seconds", err
    refused = api.client.post(
        "/v1/fine_tuning/jobs", headers=api.headers, json=_job_body(file_id, max_run_seconds=601)
    ).get_json()["error"]
    assert refused["code"] == "above_operator_limit" and "600" in refused["message"]
    ok = api.client.post(
        "/v1/fine_tuning/jobs", headers=api.headers, json=_job_body(file_id, max_run_seconds=600)
    )
    assert ok.status_code == 200, ok.get_json()


def test_worker_keeps_the_operators_cap_for_any_stored_option(monkeypatch, tmp_path):
    """A row written before the API checked (max_run_seconds=10**30) neither crashes the
    worker (OverflowError) nor outlives DORADO_MAX_JOB_SECONDS: the job finishes."""
    monkeypatch.setenv("DORADO_MODEL_CACHE", str(MODEL_CACHE))
    api = make_app(monkeypatch, tmp_path / "home", DORADO_MAX_JOB_SECONDS="600")
    file_id = _training_file(api)
    job_id = api.client.post(
        "/v1/fine_tuning/jobs",
        headers=api.headers,
        json=_job_body(file_id, hyperparameters={"n_epochs": 1, "batch_size": 5}),
    ).get_json()["id"]
    from core.db.engine import session_scope
    from core.db.models import Job
    from core.settings import load_settings
    from worker.tasks import run_job, validate_job

    with session_scope(load_settings().database_url) as session:
        job = session.get(Job, job_id)
        job.options = {**job.options, "max_run_seconds": 10**30}
    validate_job(job_id)
    run_job(job_id)
    job = api.client.get(f"/v1/fine_tuning/jobs/{job_id}", headers=api.headers).get_json()
    assert job["status"] == "succeeded", job


def test_new_organizations_get_a_queued_jobs_cap(monkeypatch, tmp_path):
    api = make_app(monkeypatch, tmp_path / "home", DORADO_DEFAULT_MAX_QUEUED_JOBS="2")
    org = api.client.post(
        "/v1/admin/organizations", headers=api.headers, json={"name": "tenant"}
    ).get_json()
    assert org["max_queued_jobs"] == 2
    key = api.client.post(
        f"/v1/admin/organizations/{org['id']}/api_keys",
        headers=api.headers,
        json={"scope": "member"},
    ).get_json()["key"]
    tenant = type(api)(api.app, api.client, api.home, {"Authorization": f"Bearer {key}"})
    file_id = _training_file(tenant)
    statuses = [
        api.client.post(
            "/v1/fine_tuning/jobs", headers=tenant.headers, json=_job_body(file_id)
        ).status_code
        for _ in range(3)
    ]
    assert statuses == [200, 200, 429]


def test_keys_per_organization_are_capped(monkeypatch, tmp_path):
    api = make_app(monkeypatch, tmp_path / "home", DORADO_MAX_KEYS_PER_ORGANIZATION="3")
    created = [
        api.client.post("/v1/organization/api_keys", headers=api.headers, json={"name": str(i)})
        for i in range(3)
    ]
    # The bootstrap key plus two new ones fill the organization's three slots.
    assert [r.status_code for r in created] == [200, 200, 400]
    err = created[2].get_json()["error"]
    assert err["code"] == "key_limit_reached" and "3" in err["message"]
    revoked = created[0].get_json()["id"]
    assert (
        api.client.delete(f"/v1/organization/api_keys/{revoked}", headers=api.headers).status_code
        == 200
    )
    again = api.client.post("/v1/organization/api_keys", headers=api.headers, json={})
    assert again.status_code == 200, again.get_json()


def test_rate_limit_per_organization_spans_its_keys(monkeypatch, tmp_path):
    api = make_app(
        monkeypatch,
        tmp_path / "home",
        DORADO_RATE_LIMIT_PER_MINUTE="100",
        DORADO_RATE_LIMIT_PER_ORGANIZATION_PER_MINUTE="6",
        DORADO_MAX_KEYS_PER_ORGANIZATION="0",
    )
    keys = [
        api.client.post("/v1/organization/api_keys", headers=api.headers, json={}).get_json()["key"]
        for _ in range(3)
    ]
    # Three requests already spent by the key creations; each new key has its own bucket.
    statuses = [
        api.client.get("/v1/models", headers={"Authorization": f"Bearer {k}"}).status_code
        for k in keys * 2
    ]
    assert statuses == [200, 200, 200, 429, 429, 429]
    refused = api.client.get("/v1/models", headers={"Authorization": f"Bearer {keys[0]}"})
    err = refused.get_json()["error"]
    assert err["type"] == "rate_limit_error" and "organization" in err["message"]
    assert int(refused.headers["retry-after"]) >= 1
    assert refused.headers["x-ratelimit-limit-requests"] == "6"


@pytest.fixture
def trained(monkeypatch, tmp_path):
    """An app and one job trained for real (tiny model) with a checkpoint per step."""
    monkeypatch.setenv("DORADO_MODEL_CACHE", str(MODEL_CACHE))
    api = make_app(monkeypatch, tmp_path / "home")
    file_id = _training_file(api)
    body = _job_body(
        file_id,
        hyperparameters={"n_epochs": 1, "batch_size": 5},
        checkpoint_every_n_steps=1,
        keep_checkpoints=100,
    )
    job_id = api.client.post("/v1/fine_tuning/jobs", headers=api.headers, json=body).get_json()[
        "id"
    ]
    from worker.tasks import run_job, validate_job

    validate_job(job_id)
    run_job(job_id)
    return api, file_id, job_id


def test_storage_quota_counts_checkpoints_and_adapters(trained):
    api, file_id, job_id = trained
    from core.db.engine import session_scope
    from core.db.models import File, Job
    from core.settings import load_settings
    from core.storage.objects import open_store
    from core.tenancy.auth import find_key
    from tests.security.helpers import KEY

    settings = load_settings()
    listed = sum(o.size for o in open_store(settings).list_objects(f"jobs/{job_id}/"))
    with session_scope(settings.database_url) as session:
        job = session.get(Job, job_id)
        assert job.status == "succeeded"
        org_id = find_key(session, KEY).organization_id
        job_bytes = job.stored_bytes
        file_bytes = session.scalar(
            sa.select(sa.func.sum(File.bytes)).where(File.organization_id == org_id)
        )
    # Two checkpoints and the final adapter (tar.gz and PEFT files): far more than the file.
    assert job_bytes > 10 * file_bytes
    assert job_bytes == listed
    # A quota above the files but below files + job outputs: the organization is full.
    quota = file_bytes + job_bytes // 2
    resp = api.client.post(
        f"/v1/admin/organizations/{org_id}",
        headers=api.headers,
        json={"storage_quota_bytes": quota},
    )
    assert resp.status_code == 200, resp.get_json()
    small = upload(api.client, api.headers, chat_lines(10, "more"))
    assert small.status_code == 400
    assert small.get_json()["error"]["code"] == "storage_quota_exceeded"
    again = api.client.post("/v1/fine_tuning/jobs", headers=api.headers, json=_job_body(file_id))
    assert again.status_code == 400, again.get_json()
    assert again.get_json()["error"]["code"] == "storage_quota_exceeded"
    merged = api.client.get(
        f"/v1/fine_tuning/jobs/{job_id}/adapter?format=merged", headers=api.headers
    )
    assert merged.status_code == 400
    assert merged.get_json()["error"]["code"] == "storage_quota_exceeded"
