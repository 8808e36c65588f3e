"""The OpenAPI document is valid, public, and describes what the API really returns."""

from __future__ import annotations

from openapi_spec_validator import validate

from api.openapi import EventList, FileList, FileObject, JobList, JobObject, ModelList
from tests.api.conftest import Api, chat_examples


def test_document_is_valid_openapi_and_public(api: Api):
    resp = api.client.get("/v1/openapi.json")
    assert resp.status_code == 200
    spec = resp.get_json()
    validate(spec)
    assert {
        "/v1/files",
        "/v1/fine_tuning/jobs",
        "/v1/fine_tuning/jobs/{fine_tuning_job_id}/pause",
        "/v1/fine_tuning/jobs/{fine_tuning_job_id}/checkpoints",
        "/v1/models",
    } <= set(spec["paths"])


def test_docs_page_lists_every_path(api: Api):
    html = api.client.get("/docs").get_data(as_text=True)
    for path in api.client.get("/v1/openapi.json").get_json()["paths"]:
        assert path in html


def test_responses_match_the_documented_schemas(api: Api):
    upload = api.upload(chat_examples(12)).get_json()
    FileObject.model_validate(upload, strict=True)
    FileList.model_validate(api.get("/v1/files").get_json(), strict=True)
    job = api.post(
        "/v1/fine_tuning/jobs", {"model": "tiny-random-llama", "training_file": upload["id"]}
    ).get_json()
    JobObject.model_validate(job, strict=True)
    JobList.model_validate(api.get("/v1/fine_tuning/jobs").get_json(), strict=True)
    EventList.model_validate(
        api.get(f"/v1/fine_tuning/jobs/{job['id']}/events").get_json(), strict=True
    )
    ModelList.model_validate(api.get("/v1/models").get_json(), strict=True)
