"""The walking skeleton end to end: upload -> queue -> real PEFT training -> download, with
API, worker and scheduler as separate processes, on embedded defaults and on real services."""

from __future__ import annotations

import csv
import io

from tests.conftest import EXAMPLES, MODEL_CACHE
from tests.e2e.flow import (
    adapter_summary,
    client_for,
    download_adapter,
    metrics_events,
    wait_for_job,
)
from tests.e2e.platform import Platform

API_KEY = "dor-e2e-test-key-0000000000"


def run_quickstart(platform: Platform, tmp_path) -> None:
    client = client_for(platform)
    with open(EXAMPLES / "pirate.jsonl", "rb") as handle:
        uploaded = client.files.create(file=handle, purpose="fine-tune")
    assert uploaded.status == "processed"

    jobs = {}
    for kind in ("dora", "lora"):
        jobs[kind] = client.fine_tuning.jobs.create(
            model="tiny-random-llama",
            training_file=uploaded.id,
            suffix=kind,
            hyperparameters={"n_epochs": 2},
            extra_body={"adapter": {"type": kind, "r": 8, "alpha": 16}},
        )
        assert jobs[kind].status == "validating_files"
        assert jobs[kind].model_extra["adapter"]["type"] == kind

    for kind, created in jobs.items():
        job = wait_for_job(client, created.id, timeout=240, platform=platform)
        assert job.status == "succeeded", (job.error, platform.log_tail())
        assert job.fine_tuned_model == f"ft:tiny-random-llama:default:{kind}:{job.id[-8:]}"
        assert job.trained_tokens and job.trained_tokens > 0
        assert job.finished_at and job.finished_at >= job.created_at
        assert job.error is None

        metrics = metrics_events(client, job.id)
        assert metrics, "no metrics events"
        assert {"step", "total_steps", "train_loss"} <= set(metrics[-1].data)
        assert metrics[-1].data["step"] == metrics[-1].data["total_steps"]
        messages = [e.message for e in client.fine_tuning.jobs.list_events(job.id, limit=100)]
        assert messages[0] == "The job has successfully completed"
        assert f"New fine-tuned model created: {job.fine_tuned_model}" in messages

        config, keys = adapter_summary(download_adapter(platform, job.id, tmp_path / job.id))
        assert config["use_dora"] is (kind == "dora")
        assert config["r"] == 8 and config["lora_alpha"] == 16
        magnitudes = [k for k in keys if "lora_magnitude_vector" in k]
        assert bool(magnitudes) is (kind == "dora")
        assert any("lora_A" in k for k in keys) and any("lora_B" in k for k in keys)

        (results_id,) = job.result_files
        rows = list(csv.DictReader(io.StringIO(client.files.content(results_id).text)))
        assert len(rows) == metrics[-1].data["total_steps"]

    model_ids = {m.id for m in client.models.list()}
    assert {jobs["dora"].id[-8:], jobs["lora"].id[-8:]} <= {m[-8:] for m in model_ids}


def assert_stops_cleanly(platform: Platform) -> None:
    assert len(platform.processes()) >= 5  # launcher, API (2 workers + master), worker, ...
    assert platform.stop() == 0
    assert platform.processes() == []  # Ctrl-C stopped every process of the platform


def test_quickstart_on_embedded_defaults(tmp_path):
    platform = Platform(tmp_path / "home", API_KEY, MODEL_CACHE).start()
    try:
        run_quickstart(platform, tmp_path)
        assert (tmp_path / "home" / "dorado.db").exists()
        assert list((tmp_path / "home" / "objects" / "jobs").iterdir())
    finally:
        assert_stops_cleanly(platform)


def test_quickstart_on_postgres_redis_and_s3(tmp_path, postgres_url, redis_url, s3_server):
    env = {
        "DORADO_DATABASE_URL": postgres_url,
        "DORADO_BROKER_URL": redis_url,
        "DORADO_STORAGE_URL": f"s3://{s3_server['bucket']}/dorado",
        "DORADO_S3_ENDPOINT_URL": s3_server["endpoint"],
        "AWS_ACCESS_KEY_ID": s3_server["AWS_ACCESS_KEY_ID"],
        "AWS_SECRET_ACCESS_KEY": s3_server["AWS_SECRET_ACCESS_KEY"],
        "AWS_DEFAULT_REGION": s3_server["AWS_DEFAULT_REGION"],
    }
    platform = Platform(tmp_path / "home", API_KEY, MODEL_CACHE, env).start()
    try:
        run_quickstart(platform, tmp_path)
        # Nothing went to the embedded defaults.
        assert not (tmp_path / "home" / "dorado.db").exists()
        assert not (tmp_path / "home" / "objects").exists()
        import boto3

        s3 = boto3.client(
            "s3",
            endpoint_url=s3_server["endpoint"],
            region_name="us-east-1",
            aws_access_key_id="test",
            aws_secret_access_key="test",
        )
        keys = [o["Key"] for o in s3.list_objects_v2(Bucket="dorado-test")["Contents"]]
        assert any(k.startswith("dorado/files/") for k in keys)
        assert any(k.endswith("/adapter.tar.gz") for k in keys)
    finally:
        assert_stops_cleanly(platform)
