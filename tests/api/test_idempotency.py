"""Idempotency-Key: a retried POST returns the first result and does the work once."""

from __future__ import annotations

from sqlalchemy import func, select

from core.db.engine import session_scope
from core.db.models import Job
from core.settings import load_settings
from tests.api.conftest import Api, chat_examples


def jobs_count() -> int:
    with session_scope(load_settings().database_url) as session:
        return session.scalar(select(func.count()).select_from(Job))


def test_repeated_job_create_returns_the_first_job(api: Api):
    file_id = api.upload(chat_examples()).get_json()["id"]
    body = {"model": "tiny-random-llama", "training_file": file_id}
    headers = {**api.headers, "Idempotency-Key": "create-1"}
    first = api.client.post("/v1/fine_tuning/jobs", json=body, headers=headers)
    second = api.client.post("/v1/fine_tuning/jobs", json=body, headers=headers)
    assert first.status_code == second.status_code == 200
    assert second.get_json()["id"] == first.get_json()["id"]
    assert second.headers["Idempotent-Replayed"] == "true"
    assert jobs_count() == 1
    # Without a key, or with another, a new job is created.
    api.client.post("/v1/fine_tuning/jobs", json=body, headers=api.headers)
    api.client.post(
        "/v1/fine_tuning/jobs", json=body, headers={**api.headers, "Idempotency-Key": "create-2"}
    )
    assert jobs_count() == 3


def test_key_reused_with_another_request_is_refused(api: Api):
    file_id = api.upload(chat_examples()).get_json()["id"]
    headers = {**api.headers, "Idempotency-Key": "k"}
    api.client.post(
        "/v1/fine_tuning/jobs",
        headers=headers,
        json={"model": "tiny-random-llama", "training_file": file_id},
    )
    resp = api.client.post(
        "/v1/fine_tuning/jobs",
        headers=headers,
        json={"model": "tiny-random-llama", "training_file": file_id, "suffix": "other"},
    )
    assert resp.status_code == 400
    assert resp.get_json()["error"]["code"] == "idempotency_key_reused"
    assert jobs_count() == 1


def test_client_errors_are_replayed_and_keys_are_per_organization(api: Api):
    headers = {**api.headers, "Idempotency-Key": "bad"}
    body = {"model": "nope", "training_file": "file-x"}
    first = api.client.post("/v1/fine_tuning/jobs", json=body, headers=headers)
    second = api.client.post("/v1/fine_tuning/jobs", json=body, headers=headers)
    assert first.status_code == second.status_code == 400  # an unknown model, as OpenAI
    assert first.get_json()["error"]["code"] == "model_not_available"
    assert second.get_json() == first.get_json()


def test_upload_with_key_stores_one_file(api: Api):
    headers = {**api.headers, "Idempotency-Key": "upload-1"}
    ids = set()
    for _ in range(2):
        import io
        import json

        body = "".join(json.dumps(x) + "\n" for x in chat_examples())
        resp = api.client.post(
            "/v1/files",
            headers=headers,
            content_type="multipart/form-data",
            data={"file": (io.BytesIO(body.encode()), "t.jsonl"), "purpose": "fine-tune"},
        )
        ids.add(resp.get_json()["id"])
    assert len(ids) == 1
    assert len(api.get("/v1/files").get_json()["data"]) == 1
