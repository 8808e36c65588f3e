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
        assert "81,920 MiB" in error["message"]
        assert 'adapter.quantization "nf4"' in error["message"]
    assert pooled.get("/v1/fine_tuning/jobs").get_json()["data"] == []


def test_a_quantized_job_is_planned_with_its_quantized_weights(pooled: Api):
    """The suggestion taken: the 70B job that fit nowhere fits the 80 GB pool in NF4."""
    file_id = pooled.upload(chat_examples()).get_json()["id"]
    body = {
        "model": "llama-3.1-70b",
        "training_file": file_id,
        "adapter": {"type": "dora", "quantization": "nf4"},
    }
    estimate = pooled.post("/v1/fine_tuning/jobs/estimate", body).get_json()
    job = pooled.post("/v1/fine_tuning/jobs", body).get_json()
    for resources in (estimate["resources"], job["resources"]):
        assert resources["pool"] == "a100-80gb" and resources["quantization"] == "nf4"
        assert resources["estimated_peak_mib_per_device"] <= 81920
    assert job["adapter"]["quantization"] == "nf4"
    # 8B: the weights term shrinks from bf16 (15,317 MiB) to NF4 linear layers + bf16 rest.
    small = {"model": "llama-3.1-8b", "training_file": file_id, "max_seq_length": 2048}
    nf4 = {**small, "adapter": {"type": "lora", "quantization": "nf4"}}
    int8 = {**small, "adapter": {"type": "lora", "quantization": "int8"}}
    weights = [
        pooled.post("/v1/fine_tuning/jobs/estimate", b).get_json()["resources"]["breakdown_mib"][
            "weights"
        ]
        for b in (small, int8, nf4)
    ]
    assert weights[0] == 15_317 and weights[0] > weights[1] > weights[2] > 15_317 / 4


def test_precision_fp32_is_planned_at_four_bytes_a_weight(pooled: Api):
    file_id = pooled.upload(chat_examples()).get_json()["id"]
    body = {"model": "llama-3.1-8b", "training_file": file_id, "max_seq_length": 2048}
    for precision, weights in ((None, 15_317), ("auto", 15_317), ("fp32", 30_634)):
        chosen = body if precision is None else {**body, "precision": precision}
        estimate = pooled.post("/v1/fine_tuning/jobs/estimate", chosen).get_json()
        assert estimate["resources"]["breakdown_mib"]["weights"] == weights, precision


def test_int8_dora_and_training_quantization_are_clear_400s(api: Api):
    file_id = api.upload(chat_examples()).get_json()["id"]
    body = {"model": "tiny-random-llama", "training_file": file_id}
    response = api.post(
        "/v1/fine_tuning/jobs", {**body, "adapter": {"type": "dora", "quantization": "int8"}}
    )
    assert response.status_code == 400
    assert "nf4" in response.get_json()["error"]["message"]
    response = api.post("/v1/fine_tuning/jobs", {**body, "training": {"quantization": "nf4"}})
    assert response.status_code == 400
    error = response.get_json()["error"]
    assert error["param"] == "training" and "set adapter.quantization" in error["message"], error


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
        ({"quantization": "nf4"}, "training"),
    ],
)
def test_bad_training_options_are_clear_400s(api: Api, training, param):
    file_id = api.upload(chat_examples()).get_json()["id"]
    body = {"model": "tiny-random-llama", "training_file": file_id, "training": training}
    response = api.post("/v1/fine_tuning/jobs", body)
    assert response.status_code == 400
    error = response.get_json()["error"]
    assert error["param"] and error["param"].startswith(param), error


def test_a_multi_node_job_is_planned_over_all_its_hosts(pooled: Api):
    file_id = pooled.upload(chat_examples()).get_json()["id"]
    body = {
        "model": "llama-3.1-8b",
        "training_file": file_id,
        "max_seq_length": 2048,
        "pool": "default",
        "nodes": 4,
    }
    # Four 24 GB workers of one GPU each hold Llama 8B sharded; one alone does not.
    estimate = pooled.post("/v1/fine_tuning/jobs/estimate", body).get_json()
    job = pooled.post("/v1/fine_tuning/jobs", body).get_json()
    for planned in (estimate["resources"], job["resources"]):
        assert (planned["nodes"], planned["gpus"], planned["sharding"]) == (4, 4, "fsdp")
        assert planned["estimated_peak_mib_per_device"] <= 23034
    assert job["options"]["nodes"] == 4


@pytest.mark.parametrize("nodes", [0, 65, "two", 1.5])
def test_a_bad_node_count_is_a_clear_400(api: Api, nodes):
    file_id = api.upload(chat_examples()).get_json()["id"]
    body = {"model": "tiny-random-llama", "training_file": file_id, "nodes": nodes}
    response = api.post("/v1/fine_tuning/jobs", body)
    assert response.status_code == 400
    assert response.get_json()["error"]["param"] == "nodes"
