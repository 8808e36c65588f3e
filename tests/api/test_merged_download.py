"""``GET /v1/fine_tuning/jobs/{id}/adapter?format=merged``: the same merged model as
``/adapter/merged``, once the inference service has built it into the object store.

Building the merged model needs the inference service (tests/inference covers that); here the
archive is already in the store, as after a first download, so the API serves it directly.
"""

from __future__ import annotations

import io

import pytest

from core.db.engine import session_scope
from core.db.models import Job
from core.settings import load_settings
from core.storage.objects import open_store
from tests.api.conftest import Api, chat_examples

MERGED_BYTES = b"\x1f\x8b merged model archive"


def _job(api: Api) -> str:
    upload = api.upload(chat_examples(12)).get_json()
    job = api.post(
        "/v1/fine_tuning/jobs", {"model": "tiny-random-llama", "training_file": upload["id"]}
    ).get_json()
    return job["id"]


def _succeed(job_id: str) -> None:
    with session_scope(load_settings().database_url) as session:
        job = session.get(Job, job_id)
        job.status = "succeeded"
        job.adapter_key = f"jobs/{job_id}/adapter.tar.gz"


@pytest.fixture
def merged_job(api: Api) -> str:
    job_id = _job(api)
    _succeed(job_id)
    store = open_store(load_settings())
    store.put_fileobj(f"jobs/{job_id}/adapter.tar.gz", io.BytesIO(b"the peft adapter"))
    store.put_fileobj(f"jobs/{job_id}/merged.tar.gz", io.BytesIO(MERGED_BYTES))
    return job_id


def test_format_merged_serves_the_merged_model(api: Api, merged_job: str):
    resp = api.get(f"/v1/fine_tuning/jobs/{merged_job}/adapter?format=merged")
    assert resp.status_code == 200
    assert resp.data == MERGED_BYTES
    assert resp.headers["Content-Type"] == "application/gzip"
    assert f"{merged_job}-merged.tar.gz" in resp.headers["Content-Disposition"]
    same = api.get(f"/v1/fine_tuning/jobs/{merged_job}/adapter/merged")
    assert same.status_code == 200 and same.data == MERGED_BYTES
    peft = api.get(f"/v1/fine_tuning/jobs/{merged_job}/adapter?format=peft")
    assert peft.status_code == 200 and peft.data == b"the peft adapter"


def test_format_merged_of_an_unfinished_job_is_a_clear_400(api: Api):
    job_id = _job(api)
    resp = api.get(f"/v1/fine_tuning/jobs/{job_id}/adapter?format=merged")
    assert resp.status_code == 400
    assert resp.get_json()["error"]["code"] == "adapter_not_ready"


def test_unknown_format_is_a_clear_400(api: Api, merged_job: str):
    resp = api.get(f"/v1/fine_tuning/jobs/{merged_job}/adapter?format=gguf")
    assert resp.status_code == 400
    error = resp.get_json()["error"]
    assert error["code"] == "invalid_format" and error["param"] == "format"
