"""The memory planner over the API: a job's ``resources``, its resolved ``training`` options,
the estimate's plan, and the 400 for a job that fits no GPU pool."""

from __future__ import annotations

import pytest

from core.db.engine import session_scope
from core.db.models import Model
from core.timeutil import utcnow
from tests.api.conftest import Api, chat_examples
from tests.core.test_planner import LLAMA_8B, LLAMA_70B


def _register(api: Api, name: str, config: dict) -> None:
    """A base model row with its architecture (no weights: these jobs never train)."""
    settings = api.client.application.extensions["dorado"].settings
    with session_scope(settings.database_url) as session:
        session.add(
            Model(
                id=name,
                kind="base",
                owned_by="dorado",
                builtin=False,
                source="dir:/nowhere",
                config=config,
                created_at=utcnow(),
            )
        )


@pytest.fixture
def pooled(api: Api, monkeypatch) -> Api:
    """DORADO_POOLS with a 24 GB default pool and an 80 GB one, as the issue describes."""
    monkeypatch.setenv("DORADO_POOLS", "default=23034,a100-80gb=81920")
    from core.settings import load_settings

    settings = load_settings()
    api.client.application.extensions["dorado"].settings = settings
    _register(api, "llama-3.1-70b", LLAMA_70B)
    _register(api, "llama-3.1-8b", LLAMA_8B)
    return api


def test_a_job_shows_its_resources_and_training_options(pooled: Api):
    file_id = pooled.upload(chat_examples()).get_json()["id"]
    body = {"model": "smollm2-135m-instruct", "training_file": file_id}
    job = pooled.post("/v1/fine_tuning/jobs", body).get_json()
    resources = job["resources"]
    assert resources["gpus"] == 1 and resources["pool"] == "default"
    assert 1024 < resources["estimated_peak_mib_per_device"] < 23034
    assert job["options"] == {
        "warmup_ratio": 0.0,
        "weight_decay": 0.0,
        "lr_scheduler": "linear",
        "micro_batch_tokens": 8192,
        "gradient_checkpointing": False,
    }

    body = {
        "model": "llama-3.1-8b",
        "training_file": file_id,
        "max_seq_length": 4096,
        "training": {"warmup_ratio": 0.1, "weight_decay": 0.01},
    }
    job = pooled.post("/v1/fine_tuning/jobs", body).get_json()
    assert job["resources"]["pool"] == "a100-80gb"  # the 70B-by-name rule is gone
    assert job["options"]["lr_scheduler"] == "cosine"  # a large model's default
    assert (job["options"]["warmup_ratio"], job["options"]["weight_decay"]) == (0.1, 0.01)


def test_a_job_that_fits_no_pool_is_refused_with_what_would_fit(pooled: Api):
    file_id = pooled.upload(chat_examples()).get_json()["id"]
    body = {"model": "llama-3.1-70b", "training_file": file_id}
    for path in ("/v1/fine_tuning/jobs", "/v1/fine_tuning/jobs/estimate"):
        response = pooled.post(path, body)
        assert response.status_code == 400, response.get_json()
        error = response.get_json()["error"]
        assert error["code"] == "job_too_large"
        assert "81,920 MiB" in error["message"] and 'quantization "nf4"' in error["message"]
    assert pooled.get("/v1/fine_tuning/jobs").get_json()["data"] == []


def test_the_estimate_shows_the_plan(pooled: Api):
    file_id = pooled.upload(chat_examples()).get_json()["id"]
    body = {"model": "llama-3.1-8b", "training_file": file_id, "max_seq_length": 2048}
    estimate = pooled.post("/v1/fine_tuning/jobs/estimate", body).get_json()
    assert estimate["pool"] == "a100-80gb"
    assert estimate["resources"]["breakdown_mib"]["weights"] == 15_317
    assert estimate["training"]["micro_batch_tokens"] == 4096


@pytest.mark.parametrize(
    ("training", "param"),
    [
        ({"warmup_ratio": 0.9}, "training.warmup_ratio"),
        ({"lr_scheduler": "step"}, "training.lr_scheduler"),
        ({"micro_batch_tokens": 8}, "training.micro_batch_tokens"),
        ({"gradient_checkpointing": "yes"}, "training.gradient_checkpointing"),
        ({"quantization": "nf4"}, "training.quantization"),
    ],
)
def test_bad_training_options_are_clear_400s(api: Api, training, param):
    file_id = api.upload(chat_examples()).get_json()["id"]
    body = {"model": "tiny-random-llama", "training_file": file_id, "training": training}
    response = api.post("/v1/fine_tuning/jobs", body)
    assert response.status_code == 400
    error = response.get_json()["error"]
    assert error["param"] and error["param"].startswith(param), error
