"""A real Celery worker trains jobs across two gloo processes (DORADO_WORKER_CPU_PROCESSES=2),
as a multi-GPU worker does across its GPUs: the job succeeds with exact metrics and token
counts and a PEFT-loadable adapter; a rank killed mid-training gets the job retried from its
last checkpoint, on the same two-process path, to the same end."""

from __future__ import annotations

import io
import os
import re
import signal
import tarfile
from pathlib import Path

import pytest
from openai import OpenAI

from tests.conftest import MODEL_CACHE
from tests.faults.cluster import Cluster
from tests.faults.helpers import (
    PIRATE_EXAMPLES,
    csv_steps,
    messages,
    rank_pids,
    succeeded,
    upload_pirate,
    wait_until,
)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory):
    home = tmp_path_factory.mktemp("dist") / "home"
    running = Cluster(
        home, "dor-dist-worker-key-0000000000", MODEL_CACHE, {"DORADO_WORKER_CPU_PROCESSES": "2"}
    )
    running.start_platform()
    running.start_worker("dist")
    yield running
    running.stop()


@pytest.fixture(scope="module")
def client(cluster: Cluster) -> OpenAI:
    return OpenAI(base_url=cluster.base_url, api_key=cluster.api_key, max_retries=0)


def test_a_job_trains_on_two_processes(client: OpenAI, cluster: Cluster, tmp_path: Path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    training = upload_pirate(client)
    job = client.fine_tuning.jobs.create(
        model="tiny-random-llama",
        training_file=training.id,
        hyperparameters={"n_epochs": 2, "batch_size": 8},
        extra_body={"adapter": {"type": "lora"}},
    )
    done = succeeded(client, cluster, job.id)

    steps = 2 * -(-PIRATE_EXAMPLES // 8)
    events = messages(client, job.id)
    assert any(
        m.startswith("Training a lora adapter") and m.endswith("on cpu x 2") for m in events
    ), events
    assert done.model_extra["validation"]["tokens"] * 2 == done.trained_tokens  # exact count
    assert csv_steps(client, done.result_files[0]) == list(range(1, steps + 1))
    assert [c.step_number for c in client.fine_tuning.jobs.checkpoints.list(job.id)] == [
        steps,
        steps // 2,
    ]
    metrics = [
        e for e in client.fine_tuning.jobs.list_events(job.id, limit=100) if e.type == "metrics"
    ]
    assert metrics[0].data["step"] == metrics[0].data["total_steps"] == steps

    response = client.with_options(max_retries=0).get(
        f"/fine_tuning/jobs/{job.id}/adapter", cast_to=bytes
    )  # raw .tar.gz
    with tarfile.open(fileobj=io.BytesIO(response), mode="r:gz") as archive:
        archive.extractall(tmp_path / "adapter", filter="data")
    base = AutoModelForCausalLM.from_pretrained(MODEL_CACHE / "tiny-random-llama")
    tuned = PeftModel.from_pretrained(base, tmp_path / "adapter")
    assert tuned.peft_config["default"].r == 16


def test_a_killed_rank_retries_the_job_from_its_checkpoint(client: OpenAI, cluster: Cluster):
    training = upload_pirate(client)
    job = client.fine_tuning.jobs.create(
        model="tiny-random-llama",
        training_file=training.id,
        hyperparameters={"n_epochs": 2, "batch_size": 2},
        extra_body={"adapter": {"type": "lora"}, "checkpoint_every_n_steps": 6},
    )
    total = 2 * PIRATE_EXAMPLES // 2
    wait_until(
        lambda: any(c.step_number >= 6 for c in client.fine_tuning.jobs.checkpoints.list(job.id)),
        120,
        "a first checkpoint",
    )
    ranks = rank_pids(cluster.procs["dist"].pid)
    assert len(ranks) == 2, ranks
    os.kill(ranks[-1], signal.SIGKILL)

    done = succeeded(client, cluster, job.id)
    events = messages(client, job.id)
    lost = [m for m in events if "training_process_lost" in m]
    assert lost and "died without a word (killed by signal 9)" in lost[0], events
    resumed = [m for m in events if m.startswith("Resumed from step")]
    assert resumed and int(re.findall(r"\d+", resumed[-1])[0]) >= 6
    assert events.count("The job has successfully completed") == 1
    # Every step exactly once in the results, whatever was trained before the crash.
    assert csv_steps(client, done.result_files[0]) == list(range(1, total + 1))
    assert done.model_extra["validation"]["tokens"] * 2 == done.trained_tokens
    assert not rank_pids(cluster.procs["dist"].pid)  # no rank left behind
