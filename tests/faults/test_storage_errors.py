"""An S3 server that fails requests: transient failures are retried (the job succeeds),
persistent ones fail the job with a classified error instead of crashing anything."""

from __future__ import annotations

import pytest
from openai import OpenAI

from tests.conftest import MODEL_CACHE
from tests.faults.cluster import Cluster
from tests.faults.helpers import finished, upload_pirate
from tests.faults.s3proxy import FlakyS3Proxy


@pytest.fixture
def flaky_cluster(tmp_path, s3_server):
    proxy = FlakyS3Proxy(s3_server["endpoint"], fail_every=3)
    env = {
        "DORADO_STORAGE_URL": f"s3://{s3_server['bucket']}/flaky",
        "DORADO_S3_ENDPOINT_URL": proxy.url,
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
        "DORADO_MAX_JOB_RETRIES": "1",
    }
    cluster = Cluster(tmp_path / "home", "dor-s3-faults-key-0000000", MODEL_CACHE, env)
    cluster.migrate()
    cluster.start_api()
    cluster.start_scheduler()
    cluster.start_validator()
    cluster.start_worker("worker")
    yield cluster, proxy
    cluster.stop()
    proxy.close()


def test_transient_failures_are_retried_and_permanent_ones_classified(flaky_cluster):
    cluster, proxy = flaky_cluster
    client = OpenAI(base_url=cluster.base_url, api_key=cluster.api_key, max_retries=0)
    training = upload_pirate(client)
    job = client.fine_tuning.jobs.create(
        model="tiny-random-llama",
        training_file=training.id,
        hyperparameters={"n_epochs": 1},
        extra_body={"adapter": {"type": "lora"}},
    )
    done = finished(client, job.id)
    assert done.status == "succeeded", (done.error, cluster.logs())
    assert proxy.failed >= 3  # failures really happened, and were ridden out
    assert client.files.content(done.result_files[0]).text.startswith("step,")

    proxy.broken = True
    job = client.fine_tuning.jobs.create(
        model="tiny-random-llama", training_file=training.id, hyperparameters={"n_epochs": 1}
    )
    failed = finished(client, job.id)
    assert failed.status == "failed"
    assert failed.error.code == "storage_unavailable", failed.error
    assert "503" in failed.error.message and "max retries" in failed.error.message
    events = [e.message for e in client.fine_tuning.jobs.list_events(job.id, limit=100)]
    assert sum("(retry 1 of 1)" in m for m in events) == 1
