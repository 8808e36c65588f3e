"""Real Celery workers, API, scheduler and validator processes on PostgreSQL and Redis, steered
with `dorado-admin` subprocesses: workers register and serve their pool's queue, a drained
worker finishes its job and takes no new one until undrained, and a job cancelled after a
checkpoint is retried from that checkpoint."""

from __future__ import annotations

import json
import time

import pytest
from openai import OpenAI

from tests.admin.helpers import dorado_admin_json
from tests.api.conftest import chat_examples
from tests.conftest import MODEL_CACHE
from tests.faults.cluster import Cluster
from tests.faults.helpers import messages, wait_until


@pytest.fixture
def cluster(tmp_path, postgres_url, redis_url):
    running = Cluster(
        tmp_path / "home",
        "dor-admin-e2e-key-0000000000",
        MODEL_CACHE,
        {
            "DORADO_DATABASE_URL": postgres_url,
            "DORADO_BROKER_URL": redis_url,
            "DORADO_WORKER_HEARTBEAT_SECONDS": "1",
        },
    )
    running.start_platform()
    yield running
    running.stop()


def _job(client: OpenAI, training_id: str, epochs: int = 1, **extra):
    return client.fine_tuning.jobs.create(
        model="tiny-random-llama",
        training_file=training_id,
        hyperparameters={"n_epochs": epochs, "batch_size": 1},
        extra_body={"adapter": {"type": "lora"}, **extra},
    )


def _status(client: OpenAI, job_id: str) -> str:
    return client.fine_tuning.jobs.retrieve(job_id).status


def _worker(cluster: Cluster, prefix: str) -> dict:
    return wait_until(
        lambda: next(
            (
                w
                for w in dorado_admin_json(cluster.env, "workers")
                if w["name"].startswith(prefix + "@")
            ),
            None,
        ),
        60,
        f"worker {prefix} to register",
        interval=0.5,
    )


def test_pool_drain_undrain_and_retry_from_checkpoint(cluster: Cluster, tmp_path):
    env = cluster.env
    client = OpenAI(base_url=cluster.base_url, api_key=cluster.api_key, max_retries=0)
    # One worker of pool "big": it consumes dorado.jobs.big, not dorado.jobs.
    cluster.start_worker(
        "main", env={"DORADO_WORKER_POOL": "big", "DORADO_WORKER_GPU_MEMORY_MB": "81920"}
    )
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(line) + "\n" for line in chat_examples(12)))
    training = client.files.create(file=data.open("rb"), purpose="fine-tune")
    main = _worker(cluster, "main")
    assert (main["pool"], main["state"], main["gpu_memory_mb"]) == ("big", "idle", 81920)

    # No pool asked: the only GPU pool fits the tiny model. Drain the worker while it trains.
    first = _job(client, training.id)
    assert dorado_admin_json(env, "jobs", "show", first.id)["pool"] == "big"
    wait_until(lambda: _status(client, first.id) == "running", 60, "the first job to run")
    assert dorado_admin_json(env, "workers", "drain", main["name"])["draining"] is True
    second = _job(client, training.id, epochs=3, pool="big", checkpoint_every_n_steps=4)
    wait_until(lambda: _status(client, first.id) == "succeeded", 120, "the first job")
    assert dorado_admin_json(env, "jobs", "show", first.id)["worker"] == main["name"]
    wait_until(lambda: _worker(cluster, "main")["state"] == "drained", 10, "drained state")
    time.sleep(4)  # > DORADO_REPUBLISH_AFTER_SECONDS: its message was re-sent meanwhile
    assert _status(client, second.id) == "queued"
    queue = dorado_admin_json(env, "queue")
    assert [(e["id"], e["position"], e["pool"]) for e in queue] == [(second.id, 1, "big")]

    dorado_admin_json(env, "workers", "undrain", main["name"])
    wait_until(lambda: _status(client, second.id) == "running", 30, "the undrained worker")

    # Cancelled after a checkpoint, retried: it resumes from that checkpoint.
    wait_until(
        lambda: list(client.fine_tuning.jobs.checkpoints.list(second.id)), 60, "a checkpoint"
    )
    assert dorado_admin_json(env, "jobs", "cancel", second.id)["status"] == "cancelled"
    saved = max(c.step_number for c in client.fine_tuning.jobs.checkpoints.list(second.id))
    retried = dorado_admin_json(env, "jobs", "retry", second.id)
    assert retried["resume_step"] == saved < 36
    assert f"resumes from step {saved}" in retried["message"]
    wait_until(lambda: _status(client, second.id) == "succeeded", 120, "the retried job")
    events = messages(client, second.id)
    assert f"Resumed from step {saved}" in events, events
    assert dorado_admin_json(env, "jobs", "show", second.id)["worker"] == main["name"]
