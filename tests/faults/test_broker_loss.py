"""Redis loses every message (FLUSHALL) while jobs are queued and running: the database is
the source of truth, the scheduler re-publishes, every job runs to the end exactly once."""

from __future__ import annotations

import redis
from openai import OpenAI

from tests.conftest import MODEL_CACHE
from tests.faults.cluster import Cluster
from tests.faults.helpers import messages, succeeded, upload_pirate, wait_until


def test_flushed_broker_loses_no_job(tmp_path, redis_url):
    cluster = Cluster(
        tmp_path / "home", "dor-broker-key-000000000", MODEL_CACHE, {"DORADO_BROKER_URL": redis_url}
    )
    cluster.migrate()
    cluster.start_api()
    try:
        client = OpenAI(base_url=cluster.base_url, api_key=cluster.api_key, max_retries=0)
        training = upload_pirate(client)

        def create(epochs: int):
            return client.fine_tuning.jobs.create(
                model="tiny-random-llama",
                training_file=training.id,
                hyperparameters={"n_epochs": epochs, "batch_size": 1},
                extra_body={"adapter": {"type": "lora"}},
            )

        cluster.start_validator()
        cluster.start_worker("worker")
        running = create(4)
        wait_until(
            lambda: client.fine_tuning.jobs.retrieve(running.id).status == "running",
            90,
            "the first job to run",
        )
        queued = [create(1) for _ in range(2)]
        wait_until(
            lambda: all(client.fine_tuning.jobs.retrieve(j.id).status == "queued" for j in queued),
            90,
            "the others to be validated and queued",
        )
        assert redis.Redis.from_url(redis_url).dbsize() > 0  # their messages wait in Redis
        redis.Redis.from_url(redis_url).flushdb()

        cluster.start_scheduler()  # re-publishes queued jobs whose message is gone
        for job in [running, *queued]:
            succeeded(client, cluster, job.id, 600)
            events = messages(client, job.id)
            assert events.count("Fine-tuning job started") == 1  # ran once, not twice
    finally:
        cluster.stop()
