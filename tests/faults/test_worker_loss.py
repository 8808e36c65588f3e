"""A worker killed (SIGKILL) or stopped (SIGTERM) mid-training: the job continues on another
worker from its last checkpoint, no job is lost, no step is trained twice in the results."""

from __future__ import annotations

import re
import signal

import pytest
from openai import OpenAI

from tests.conftest import MODEL_CACHE
from tests.faults.cluster import Cluster
from tests.faults.helpers import (
    PIRATE_EXAMPLES,
    csv_steps,
    messages,
    metrics_steps,
    succeeded,
    upload_pirate,
    wait_until,
)

EPOCHS = 3
TOTAL = EPOCHS * PIRATE_EXAMPLES


@pytest.fixture
def cluster(tmp_path):
    running = Cluster(tmp_path / "home", "dor-faults-key-00000000000", MODEL_CACHE)
    running.start_platform()
    yield running
    running.stop()


def start_long_job(client: OpenAI):
    training = upload_pirate(client)
    return client.fine_tuning.jobs.create(
        model="tiny-random-llama",
        training_file=training.id,
        hyperparameters={"n_epochs": EPOCHS, "batch_size": 1},
        extra_body={"adapter": {"type": "lora"}, "checkpoint_every_n_steps": 20},
    )


def checkpointed_step(client: OpenAI, job_id: str) -> int:
    ckpts = list(client.fine_tuning.jobs.checkpoints.list(job_id))
    return max((c.step_number for c in ckpts), default=0)


def finish(client: OpenAI, cluster: Cluster, job_id: str):
    job = succeeded(client, cluster, job_id, timeout=600)
    assert csv_steps(client, job.result_files[0]) == list(range(1, TOTAL + 1))
    # Steps replayed from the last checkpoint are reported once, not once per attempt.
    assert metrics_steps(client, job_id) == list(range(1, TOTAL + 1))
    return job


def test_sigkill_mid_training_resumes_on_another_worker(cluster: Cluster):
    client = OpenAI(base_url=cluster.base_url, api_key=cluster.api_key, max_retries=0)
    cluster.start_worker("first")
    job = start_long_job(client)
    wait_until(lambda: checkpointed_step(client, job.id) >= 20, 120, "a first checkpoint")
    wait_until(
        lambda: max(metrics_steps(client, job.id)) > checkpointed_step(client, job.id),
        120,
        "a step past the checkpoint",
    )
    cluster.signal("first", signal.SIGKILL)
    cluster.wait("first", timeout=10)
    saved = checkpointed_step(client, job.id)
    reported = max(metrics_steps(client, job.id))
    assert client.fine_tuning.jobs.retrieve(job.id).status == "running"  # lease not expired yet

    cluster.start_worker("second")
    done = finish(client, cluster, job.id)
    events = messages(client, job.id)
    assert any("stopped responding" in m for m in events)
    resumed = [m for m in events if m.startswith("Resumed from step")]
    assert resumed and int(re.findall(r"\d+", resumed[-1])[0]) >= saved
    assert events.count("Fine-tuning job started") == 2
    assert events.count("The job has successfully completed") == 1
    assert done.trained_tokens > 0
    if reported > saved:  # steps the killed worker reported were trained and reported again
        assert any(m.startswith("Discarded the metrics") for m in events)


def test_sigterm_checkpoints_and_requeues(cluster: Cluster):
    client = OpenAI(base_url=cluster.base_url, api_key=cluster.api_key, max_retries=0)
    cluster.start_worker("first")
    job = start_long_job(client)
    wait_until(
        lambda: client.fine_tuning.jobs.retrieve(job.id).status == "running", 60, "the job to run"
    )
    wait_until(
        lambda: any(m.startswith("Step ") for m in messages(client, job.id)), 60, "training steps"
    )
    cluster.signal("first", signal.SIGTERM)
    assert cluster.wait("first", timeout=60) == 0
    after = messages(client, job.id)
    assert any(m.startswith("The worker is shutting down; the job was re-queued") for m in after)
    assert client.fine_tuning.jobs.retrieve(job.id).status == "queued"

    cluster.start_worker("second")
    finish(client, cluster, job.id)
    events = messages(client, job.id)
    assert not any("stopped responding" in m for m in events)  # handed over, not lost
    assert any(m.startswith("Resumed from step") for m in events)
