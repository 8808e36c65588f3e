"""DPO jobs over the API: preference files, ``method`` echoed with "auto" resolved, clear 400s."""

from __future__ import annotations

from tests.api.conftest import Api, chat_examples, preference_examples, succeeded_job
from tests.api.test_bad_input import assert_envelope


def test_dpo_job_resolves_auto_and_echoes_method(api: Api):
    upload = api.upload(preference_examples(20))
    assert upload.status_code == 200, upload.get_json()
    assert upload.get_json()["statistics"]["format"] == "preference"
    body = {
        "model": "tiny-random-llama",
        "training_file": upload.get_json()["id"],
        "method": {"type": "dpo", "dpo": {"hyperparameters": {"beta": "auto", "n_epochs": 2}}},
    }
    resp = api.post("/v1/fine_tuning/jobs", body)
    assert resp.status_code == 200, resp.get_json()
    job = resp.get_json()
    assert job["method"] == {
        "type": "dpo",
        "dpo": {
            "hyperparameters": {
                "n_epochs": 2,
                "batch_size": 2,
                "learning_rate_multiplier": 1.0,
                "beta": 0.1,
            }
        },
    }
    assert job["hyperparameters"] == {
        "n_epochs": 2,
        "batch_size": 2,
        "learning_rate_multiplier": 1.0,
    }
    assert api.get(f"/v1/fine_tuning/jobs/{job['id']}").get_json()["method"] == job["method"]


def test_supervised_job_method_has_no_null_siblings(api: Api):
    file_id = api.upload(chat_examples(12)).get_json()["id"]
    job = api.post(
        "/v1/fine_tuning/jobs", {"model": "tiny-random-llama", "training_file": file_id}
    ).get_json()
    assert set(job["method"]) == {"type", "supervised"}


def test_a_preference_file_for_a_supervised_job_is_a_400_naming_the_line(api: Api):
    file_id = api.upload(preference_examples()).get_json()["id"]
    err = assert_envelope(
        api.post("/v1/fine_tuning/jobs", {"model": "tiny-random-llama", "training_file": file_id}),
        400,
        "training_file",
    )
    assert "line 1" in err["message"] and "preference" in err["message"]


def test_a_chat_file_for_a_dpo_job_is_a_400_naming_the_line(api: Api):
    file_id = api.upload(chat_examples(12)).get_json()["id"]
    body = {"model": "tiny-random-llama", "training_file": file_id, "method": {"type": "dpo"}}
    err = assert_envelope(api.post("/v1/fine_tuning/jobs", body), 400, "training_file")
    assert "line 1" in err["message"] and "needs preference examples" in err["message"]


def test_a_bad_preference_line_fails_the_upload(api: Api):
    lines = preference_examples()
    lines[6] = {**lines[6], "non_preferred_output": [{"role": "user", "content": "x"}]}
    resp = api.upload(lines)
    assert resp.status_code == 400, resp.get_json()
    assert "line 7" in resp.get_json()["error"]["message"]


# --- continued fine-tuning: model "ft:..." ---------------------------------------------------


def test_ft_model_continues_with_its_adapter_and_names_its_parent(api: Api):
    chat_id = api.upload(chat_examples(12)).get_json()["id"]
    parent = succeeded_job(api, chat_id, {"type": "lora", "r": 8})
    assert parent["fine_tuned_model"].startswith("ft:tiny-random-llama:")
    assert parent["parent"] is None
    pref_id = api.upload(preference_examples()).get_json()["id"]
    body = {
        "model": parent["fine_tuned_model"],
        "training_file": pref_id,
        "method": {"type": "dpo"},
        "suffix": "dpo",
    }
    resp = api.post("/v1/fine_tuning/jobs", body)
    assert resp.status_code == 200, resp.get_json()
    child = resp.get_json()
    assert child["model"] == "tiny-random-llama"  # the base, resolved through the parent
    assert child["parent"] == parent["fine_tuned_model"]
    assert child["parent_job_id"] == parent["id"]
    assert (child["adapter"]["type"], child["adapter"]["r"]) == ("lora", 8)
    # SFT -> SFT works the same way.
    again = api.post(
        "/v1/fine_tuning/jobs", {"model": parent["fine_tuned_model"], "training_file": chat_id}
    )
    assert again.status_code == 200 and again.get_json()["parent"] == parent["fine_tuned_model"]


def test_ft_model_with_another_adapter_shape_is_a_400(api: Api):
    chat_id = api.upload(chat_examples(12)).get_json()["id"]
    parent = succeeded_job(api, chat_id, {"type": "lora", "r": 8})
    body = {
        "model": parent["fine_tuned_model"],
        "training_file": chat_id,
        "adapter": {"type": "dora", "r": 8},
    }
    err = assert_envelope(api.post("/v1/fine_tuning/jobs", body), 400, "adapter")
    assert "trains its lora adapter of rank 8" in err["message"]


def test_unknown_or_foreign_ft_model_is_model_not_available(api: Api):
    from core.db.engine import session_scope
    from core.db.models import Model
    from core.settings import load_settings

    chat_id = api.upload(chat_examples(12)).get_json()["id"]
    parent = succeeded_job(api, chat_id, {"type": "lora", "r": 8})
    from core.tenancy import auth

    with session_scope(load_settings().database_url) as session:
        other = auth.create_organization(session, "someone-else")
        session.flush()
        session.get(Model, parent["fine_tuned_model"]).organization_id = other.id
    for name in ("ft:tiny-random-llama:default::nope1234", parent["fine_tuned_model"]):
        err = assert_envelope(
            api.post("/v1/fine_tuning/jobs", {"model": name, "training_file": chat_id}),
            400,
            "model",
        )
        assert err["code"] == "model_not_available"
        assert "does not exist in your organization" in err["message"]
