"""Bad input gets a 4xx in OpenAI's error envelope, never a 500, and leaves nothing behind."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from core.db.engine import session_scope
from core.db.models import File, Job
from core.settings import load_settings
from tests.api.conftest import Api, chat_examples


def assert_envelope(resp, status: int, param: str | None = None) -> dict:
    assert resp.status_code == status, resp.get_json()
    err = resp.get_json()["error"]
    assert set(err) >= {"message", "type", "param", "code"}
    assert isinstance(err["message"], str) and err["message"]
    if param is not None:
        assert err["param"] == param
    assert resp.headers["x-request-id"]
    return err


def count(model) -> int:
    with session_scope(load_settings().database_url) as session:
        return session.scalar(select(func.count()).select_from(model))


def stored_objects(api: Api) -> list:
    root = api.home / "objects" / "files"
    return list(root.rglob("*")) if root.exists() else []


def test_missing_and_wrong_api_key(api: Api):
    err = assert_envelope(api.client.get("/v1/models"), 401)
    assert err["code"] == "invalid_api_key"
    resp = api.client.get("/v1/models", headers={"Authorization": "Bearer dor-wrong-key-xyz"})
    err = assert_envelope(resp, 401)
    assert "dor-wrong-ke..." in err["message"]
    assert "xyz" not in err["message"]


def test_malformed_jsonl_names_the_line_and_stores_nothing(api: Api):
    lines = chat_examples(12)
    lines[4] = '{"messages": [oops'
    err = assert_envelope(api.upload(lines), 400, "file")
    assert "line 5" in err["message"]
    assert "invalid JSON" in err["message"]
    assert err["problems"][0]["line"] == 5
    assert count(File) == 0 and stored_objects(api) == []


def test_file_without_assistant_message(api: Api):
    lines = chat_examples(12)
    lines[0] = {"messages": [{"role": "user", "content": "hello"}]}
    err = assert_envelope(api.upload(lines), 400, "file")
    assert "line 1" in err["message"] and "no assistant message" in err["message"]


def test_upload_needs_file_purpose_and_jsonl(api: Api):
    assert_envelope(
        api.client.post("/v1/files", data={"purpose": "fine-tune"}, headers=api.headers),
        400,
        "file",
    )
    assert_envelope(api.upload(chat_examples(), purpose="assistants"), 400, "purpose")
    assert_envelope(api.upload(chat_examples(), filename="train.csv"), 400, "file")


def test_good_upload_is_processed(api: Api):
    resp = api.upload(chat_examples(12))
    assert resp.status_code == 200, resp.get_json()
    body = resp.get_json()
    assert body["id"].startswith("file-") and len(body["id"]) == 29
    assert body["status"] == "processed" and body["example_count"] == 12
    assert api.get(f"/v1/files/{body['id']}").get_json()["bytes"] == body["bytes"]
    content = api.get(f"/v1/files/{body['id']}/content").data
    assert content.count(b"\n") == 12


@pytest.fixture
def file_id(api: Api) -> str:
    return api.upload(chat_examples(12)).get_json()["id"]


@pytest.mark.parametrize(
    "body, param",
    [
        ({"model": "no-such-model"}, "model"),
        ({"training_file": "file-doesnotexist000000000000"}, "training_file"),
        ({"adapter": {"type": "dora", "r": 0}}, "adapter.r"),
        ({"adapter": {"type": "dora", "r": 100000}}, "adapter.r"),
        ({"adapter": {"type": "qlora"}}, "adapter.type"),
        ({"adapter": {"target_modules": []}}, "adapter.target_modules"),
        ({"hyperparameters": {"n_epochs": 0}}, "hyperparameters.n_epochs"),
        ({"hyperparameters": {"batch_size": "big"}}, "hyperparameters.batch_size"),
        ({"suffix": "x" * 65}, "suffix"),
        ({"seed": -1}, "seed"),
        ({"metadata": {f"k{i}": "v" for i in range(17)}}, "metadata"),
        ({"method": {"type": "reinforcement"}}, "method.type"),
        ({"method": {"type": "dpo"}}, "training_file"),  # a chat file cannot train DPO
        ({"method": {"type": "supervised", "dpo": {}}}, "method"),
        ({"method": {"type": "dpo", "dpo": {"hyperparameters": {"beta": 3}}}}, "method.dpo"),
        ({"unknown_field": 1}, "unknown_field"),
    ],
)
def test_bad_job_requests(api: Api, file_id: str, body: dict, param: str):
    request = {"model": "tiny-random-llama", "training_file": file_id, **body}
    status = 404 if param == "training_file" and "method" not in body else 400
    err = assert_envelope(api.post("/v1/fine_tuning/jobs", request), status)
    assert err["param"].startswith(param), err
    if param == "model":  # as OpenAI answers
        assert err["code"] == "model_not_available"
    assert count(Job) == 0


def test_missing_training_file_field_and_non_json_body(api: Api):
    assert_envelope(
        api.post("/v1/fine_tuning/jobs", {"model": "tiny-random-llama"}), 400, "training_file"
    )
    resp = api.client.post("/v1/fine_tuning/jobs", data="not json", headers=api.headers)
    assert_envelope(resp, 400)


def test_unknown_ids_are_404(api: Api):
    assert_envelope(api.get("/v1/files/file-nope"), 404)
    assert_envelope(api.get("/v1/fine_tuning/jobs/ftjob-nope"), 404)
    assert_envelope(api.get("/v1/fine_tuning/jobs/ftjob-nope/events"), 404)
    assert_envelope(api.get("/v1/models/ft:nope"), 404)
    assert_envelope(api.get("/v1/no/such/route"), 404)


def test_job_create_resolves_auto_and_echoes_adapter(api: Api, file_id: str):
    resp = api.post(
        "/v1/fine_tuning/jobs",
        {
            "model": "tiny-random-llama",
            "training_file": file_id,
            "adapter": {"type": "lora", "r": 8},
            "suffix": "demo",
            "seed": 7,
        },
    )
    assert resp.status_code == 200, resp.get_json()
    job = resp.get_json()
    assert job["status"] == "validating_files"  # the validator tokenizes the files next
    assert job["hyperparameters"] == {
        "n_epochs": 8,
        "batch_size": 1,
        "learning_rate_multiplier": 1.0,
    }
    assert job["adapter"] == {
        "type": "lora",
        "r": 8,
        "alpha": 32,
        "dropout": 0.0,
        "target_modules": "all-linear",
        "quantization": None,
    }
    assert job["seed"] == 7 and job["fine_tuned_model"] is None
    events = api.get(f"/v1/fine_tuning/jobs/{job['id']}/events").get_json()["data"]
    assert [e["message"] for e in reversed(events)] == [
        f"Created fine-tuning job: {job['id']}",
        f"Validating training file: {file_id}",
    ]
    listed = api.get("/v1/fine_tuning/jobs").get_json()
    assert [j["id"] for j in listed["data"]] == [job["id"]]


def test_cancel_finished_job_is_a_clear_4xx(api: Api, file_id: str):
    job = api.post(
        "/v1/fine_tuning/jobs", {"model": "tiny-random-llama", "training_file": file_id}
    ).get_json()
    assert (
        api.post(f"/v1/fine_tuning/jobs/{job['id']}/cancel", {}).get_json()["status"] == "cancelled"
    )
    err = assert_envelope(api.post(f"/v1/fine_tuning/jobs/{job['id']}/cancel", {}), 400)
    assert "already cancelled" in err["message"]


def test_models_list_has_builtins(api: Api):
    ids = [m["id"] for m in api.get("/v1/models").get_json()["data"]]
    assert ids == ["smollm2-135m-instruct", "tiny-random-llama"]


def test_job_list_status_filter(api: Api, file_id: str):
    body = {"model": "tiny-random-llama", "training_file": file_id}
    first = api.post("/v1/fine_tuning/jobs", body).get_json()
    second = api.post("/v1/fine_tuning/jobs", body).get_json()
    api.post(f"/v1/fine_tuning/jobs/{first['id']}/cancel", {})
    listed = api.get("/v1/fine_tuning/jobs?status=validating_files").get_json()["data"]
    assert [j["id"] for j in listed] == [second["id"]]
    cancelled = api.get("/v1/fine_tuning/jobs?status=cancelled").get_json()["data"]
    assert [j["id"] for j in cancelled] == [first["id"]]
    assert_envelope(api.get("/v1/fine_tuning/jobs?status=bogus"), 400, "status")
