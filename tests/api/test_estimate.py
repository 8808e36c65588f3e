"""``POST /v1/fine_tuning/jobs/estimate`` takes what job creation takes: DPO ``method`` (pairs
counted as two rows) and ``ft:`` models (the parent's base and adapter), with creation's 400s."""

from __future__ import annotations

import math

from tests.api.conftest import Api, chat_examples, preference_examples, succeeded_job
from tests.api.test_bad_input import assert_envelope

ESTIMATE = "/v1/fine_tuning/jobs/estimate"
JOBS = "/v1/fine_tuning/jobs"


def _chars(messages: list[dict]) -> int:
    return sum(len(m["content"]) for m in messages)


def test_dpo_estimate_counts_pairs_as_two_rows(api: Api):
    pairs = preference_examples(20)
    pref_id = api.upload(pairs).get_json()["id"]
    chat_id = api.upload(chat_examples(40)).get_json()["id"]
    dpo_body = {
        "model": "tiny-random-llama",
        "training_file": pref_id,
        "max_seq_length": 256,
        "method": {"type": "dpo", "dpo": {"hyperparameters": {"n_epochs": 2, "batch_size": 3}}},
    }
    resp = api.post(ESTIMATE, dpo_body)
    assert resp.status_code == 200, resp.get_json()
    estimate = resp.get_json()
    assert estimate["example_count"] == 20  # pairs
    assert (estimate["steps_per_epoch"], estimate["total_steps"]) == (7, 14)
    assert estimate["method"] == {
        "type": "dpo",
        "dpo": {
            "hyperparameters": {
                "n_epochs": 2,
                "batch_size": 3,
                "learning_rate_multiplier": 1.0,
                "beta": 0.1,
            }
        },
    }
    # Each row of a pair holds the input and one reply: the input counts twice.
    rows_chars = sum(
        2 * _chars(p["input"]["messages"])
        + _chars(p["preferred_output"])
        + _chars(p["non_preferred_output"])
        for p in pairs
    )
    assert estimate["estimated_tokens_per_epoch"] == math.ceil(rows_chars / 4)
    assert estimate["estimated_total_tokens"] == 2 * math.ceil(rows_chars / 4)

    # The plan is the one creation makes, and that of a supervised batch of twice the rows.
    job = api.post(JOBS, dpo_body).get_json()
    assert estimate["resources"] == job["resources"] and estimate["method"] == job["method"]
    sft = api.post(
        ESTIMATE,
        {
            "model": "tiny-random-llama",
            "training_file": chat_id,
            "max_seq_length": 256,
            "hyperparameters": {"batch_size": 6},
        },
    ).get_json()
    assert sft["resources"] == estimate["resources"]
    one_row = api.post(
        ESTIMATE,
        {
            "model": "tiny-random-llama",
            "training_file": chat_id,
            "max_seq_length": 256,
            "hyperparameters": {"batch_size": 3},
        },
    ).get_json()
    assert one_row["resources"] != estimate["resources"]  # the rows count in the plan


def test_estimate_refuses_what_creation_refuses_for_the_method(api: Api):
    pref_id = api.upload(preference_examples()).get_json()["id"]
    chat_id = api.upload(chat_examples()).get_json()["id"]
    cases = [
        ({"training_file": chat_id, "method": {"type": "dpo"}}, "training_file"),
        ({"training_file": pref_id}, "training_file"),
        ({"training_file": chat_id, "method": {"type": "reinforcement"}}, "method.type"),
    ]
    for extra, param in cases:
        body = {"model": "tiny-random-llama", **extra}
        created = assert_envelope(api.post(JOBS, body), 400, param)
        assert assert_envelope(api.post(ESTIMATE, body), 400, param) == created


def test_ft_estimate_uses_the_parents_base_and_adapter(api: Api):
    chat_id = api.upload(chat_examples(12)).get_json()["id"]
    parent = succeeded_job(api, chat_id, {"type": "lora", "r": 8})
    pref_id = api.upload(preference_examples()).get_json()["id"]
    body = {
        "model": parent["fine_tuned_model"],
        "training_file": pref_id,
        "method": {"type": "dpo"},
    }
    resp = api.post(ESTIMATE, body)
    assert resp.status_code == 200, resp.get_json()
    estimate = resp.get_json()
    assert estimate["model"] == "tiny-random-llama"
    assert estimate["parent"] == parent["fine_tuned_model"]
    assert estimate["adapter"] == parent["adapter"]
    job = api.post(JOBS, body).get_json()
    assert (estimate["adapter"], estimate["resources"]) == (job["adapter"], job["resources"])
    # A fresh job's estimate names no parent and trains the default adapter.
    fresh = api.post(ESTIMATE, {"model": "tiny-random-llama", "training_file": chat_id})
    assert fresh.get_json()["parent"] is None
    assert fresh.get_json()["adapter"]["type"] == "dora"


def test_ft_estimate_gives_creations_errors(api: Api):
    from core.db.engine import session_scope
    from core.db.models import Model
    from core.settings import load_settings
    from core.tenancy import auth

    chat_id = api.upload(chat_examples(12)).get_json()["id"]
    parent = succeeded_job(api, chat_id, {"type": "lora", "r": 8})
    other_shape = {
        "model": parent["fine_tuned_model"],
        "training_file": chat_id,
        "adapter": {"type": "dora", "r": 8},
    }
    created = assert_envelope(api.post(JOBS, other_shape), 400, "adapter")
    assert assert_envelope(api.post(ESTIMATE, other_shape), 400, "adapter") == created
    with session_scope(load_settings().database_url) as session:
        other = auth.create_organization(session, "someone-else")
        session.flush()
        session.get(Model, parent["fine_tuned_model"]).organization_id = other.id
    for name in (
        "ft:tiny-random-llama:default::nope1234",  # unknown
        parent["fine_tuned_model"],  # another organization's
        "no-such-base-model",
    ):
        body = {"model": name, "training_file": chat_id}
        created = assert_envelope(api.post(JOBS, body), 400, "model")
        estimated = assert_envelope(api.post(ESTIMATE, body), 400, "model")
        assert estimated == created and created["code"] == "model_not_available"
