"""Experiment trackers against real servers: a job's metrics, parameters and adapter location
reach a real ``mlflow server`` on loopback (read back with MLflow's client); W&B in offline
mode writes its run files; a tracker that is down leaves the job's result unchanged and says
so in an event."""

from __future__ import annotations

import io
import json
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from mlflow.tracking import MlflowClient

from core.settings import load_settings
from tests.conftest import MODEL_CACHE
from worker import artifacts
from worker.trackers.base import Outcome, RunInfo
from worker.trackers.hub import TrackerHub
from worker.trackers.mlflow_tracker import JOB_TAG, MlflowTracker
from worker.trackers.wandb_tracker import WandbTracker

KEY = "dor-trackers-test-key-0000000000"
AUTH = {"Authorization": f"Bearer {KEY}"}
MLFLOW = Path(sys.executable).parent / "mlflow"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def mlflow_url(tmp_path_factory) -> Iterator[str]:
    """A real MLflow tracking server on loopback (SQLite backend)."""
    root = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    log = open(root / "server.log", "wb")
    proc = subprocess.Popen(
        [
            str(MLFLOW),
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
            "--backend-store-uri",
            f"sqlite:///{root}/mlflow.db",
            "--default-artifact-root",
            str(root / "artifacts"),
        ],  # fmt: skip
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    try:
        while True:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError((root / "server.log").read_text()[-3000:])
            try:
                if requests.get(f"{url}/health", timeout=1).ok:
                    break
            except requests.RequestException:
                time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


RUN = RunInfo(
    job_id="ftjob-tracker-unit",
    name="unit",
    params={"model": "tiny-random-llama", "hyperparameters": {"n_epochs": 2, "batch_size": 4}},
)
STEPS = [(1, {"train_loss": 2.5, "train_mean_token_accuracy": 0.1}),
         (2, {"train_loss": 2.0, "train_mean_token_accuracy": 0.3, "valid_loss": 2.2}),
         (3, {"train_loss": 1.5, "train_mean_token_accuracy": 0.5})]  # fmt: skip
DONE = Outcome("succeeded", "ft:tiny:acme:x", "s3://bucket/adapters/x.tar.gz", 1234)


def test_the_hub_logs_a_run_to_mlflow(mlflow_url: str):
    warnings: list[tuple[str, str]] = []
    tracker = MlflowTracker(mlflow_url, "unit-experiment", "unit run")
    hub = TrackerHub(RUN.job_id, [tracker], lambda *w: warnings.append(w))
    hub.start(RUN)
    for step, metrics in STEPS:
        hub.log_metrics(step, metrics)
    assert hub.close(DONE)
    assert warnings == [] and hub.down == {}

    client = MlflowClient(mlflow_url)
    run = client.get_run(tracker.run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "unit run"
    assert run.data.params == {"model": "tiny-random-llama", "hyperparameters.n_epochs": "2",
                               "hyperparameters.batch_size": "4"}  # fmt: skip
    assert run.data.tags[JOB_TAG] == RUN.job_id
    assert run.data.tags["dorado.adapter_uri"] == DONE.adapter_uri
    assert run.data.tags["dorado.fine_tuned_model"] == DONE.fine_tuned_model
    history = client.get_metric_history(tracker.run_id, "train_loss")
    assert [(m.step, m.value) for m in history] == [(1, 2.5), (2, 2.0), (3, 1.5)]
    assert [m.value for m in client.get_metric_history(tracker.run_id, "valid_loss")] == [2.2]


class Refusing:
    """A tracker whose server refuses every call (a real refused connection)."""

    label = "Refusing"

    def __init__(self) -> None:
        self.calls = 0
        self.port = free_port()  # nothing listens there

    def _call(self, *args: object) -> None:
        self.calls += 1
        requests.post(f"http://127.0.0.1:{self.port}/", timeout=1)

    start = log_metrics = finish = _call


def test_a_tracker_that_is_down_never_blocks_and_is_reported_once(mlflow_url: str):
    warnings: list[tuple[str, str]] = []
    down, healthy = Refusing(), MlflowTracker(mlflow_url, "unit-experiment", "beside a dead one")
    hub = TrackerHub("ftjob-outage-unit", [down, healthy], lambda *w: warnings.append(w),
                     queue_size=5, backoff_seconds=0.05)  # fmt: skip
    hub.start(RUN)
    began = time.monotonic()
    for step in range(1, 201):  # far more than the queue holds: the caller never waits
        hub.log_metrics(step, {"train_loss": 1.0 / step})
    assert time.monotonic() - began < 0.5
    assert hub.close(DONE)
    assert [label for label, _ in warnings] == ["Refusing"] and "Refusing" in hub.down
    assert down.calls == 3  # start, retried; then given up on
    assert hub.dropped > 0
    assert MlflowClient(mlflow_url).get_run(healthy.run_id).info.status == "FINISHED"


def test_wandb_offline_writes_the_run_files(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    options = {"project": "dorado-tests", "name": "offline run", "entity": None, "tags": ["ci"]}
    tracker = WandbTracker(options, "x" * 40, tmp_path / "wandb-runs")
    hub = TrackerHub(RUN.job_id, [tracker], lambda *w: pytest.fail(f"unreachable: {w}"))
    hub.start(RUN)
    for step, metrics in STEPS:
        hub.log_metrics(step, metrics)
    assert hub.close(DONE, timeout=120)
    runs = list((tmp_path / "wandb-runs" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    # What `wandb sync` sends. W&B's service process writes it asynchronously: wait for the
    # final summary (the last thing finish() sends) to be on disk.
    deadline = time.monotonic() + 30
    while True:
        records = wandb_records(runs[0] / "run-ftjob-tracker-unit.wandb")
        if b"dorado/adapter_uri" in b"".join(r.SerializeToString() for r in records):
            break
        assert time.monotonic() < deadline, [r.WhichOneof("record_type") for r in records]
        time.sleep(0.2)
    (run,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert (run.run_id, run.project, run.display_name) == (
        RUN.job_id,
        "dorado-tests",
        "offline run",
    )
    assert list(run.tags) == ["ci"]
    config = {u.key: json.loads(u.value_json) for u in run.config.update}
    assert config["hyperparameters.n_epochs"] == 2 and config["model"] == "tiny-random-llama"
    history = [
        {"/".join(i.nested_key) or i.key: json.loads(i.value_json) for i in r.history.item}
        for r in records
        if r.WhichOneof("record_type") == "history"
    ]
    assert [(h["_step"], h["train_loss"]) for h in history] == [(1, 2.5), (2, 2.0), (3, 1.5)]
    summary = {
        u.key: json.loads(u.value_json)
        for r in records
        if r.WhichOneof("record_type") == "summary"
        for u in r.summary.update
        if u.key
    }
    assert summary["dorado/adapter_uri"] == DONE.adapter_uri
    assert summary["dorado/fine_tuned_model"] == DONE.fine_tuned_model


def wandb_records(path: Path) -> list:
    """The protobuf records of a W&B run file (a LevelDB-style log: 7-byte file header, then
    32 KiB blocks of chunks, each with a 7-byte header: CRC-32, length, type)."""
    from wandb.proto import wandb_internal_pb2

    data, pos, pending, records = path.read_bytes(), 7, b"", []
    while pos + 7 <= len(data):
        left = 32768 - pos % 32768
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if left < 7 or (length == 0 and kind == 0):  # block padding
            pos += left
            continue
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last chunk of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


# --- whole jobs, trained by the worker's own task -------------------------------------------
def chat_lines(n: int) -> bytes:
    rows = [{"messages": [{"role": "user", "content": f"question {i}?"},
                          {"role": "assistant", "content": f"answer {i}."}]}
            for i in range(n)]  # fmt: skip
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


@pytest.fixture
def platform(postgres_url: str, tmp_path: Path, monkeypatch):
    """The API as a Flask test client and the worker's task functions, sharing settings."""
    from api import create_app
    from core.bootstrap import prepare_database
    from core.settings import load_settings

    monkeypatch.setenv("DORADO_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DORADO_DATABASE_URL", postgres_url)
    monkeypatch.setenv("DORADO_BOOTSTRAP_API_KEY", KEY)
    monkeypatch.setenv("DORADO_MODEL_CACHE", str(MODEL_CACHE))
    monkeypatch.delenv("DORADO_BROKER_URL", raising=False)

    def start(mlflow_tracking_uri: str):
        monkeypatch.setenv("DORADO_MLFLOW_TRACKING_URI", mlflow_tracking_uri)
        settings = load_settings()
        prepare_database(settings)
        client = create_app(settings).test_client()
        upload = client.post(
            "/v1/files",
            headers=AUTH,
            content_type="multipart/form-data",
            data={"file": (io.BytesIO(chat_lines(10)), "t.jsonl"), "purpose": "fine-tune"},
        )
        assert upload.status_code == 200, upload.get_json()
        return client, upload.get_json()["id"]

    return start


def train(client, file_id: str, integrations: list | None) -> tuple[dict, float]:
    from worker.tasks import run_job, validate_job

    body = {"model": "tiny-random-llama", "training_file": file_id, "seed": 7,
            "hyperparameters": {"n_epochs": 1, "batch_size": 5}}  # fmt: skip
    if integrations is not None:
        body["integrations"] = integrations
    created = client.post("/v1/fine_tuning/jobs", json=body, headers=AUTH)
    assert created.status_code == 200, created.get_json()
    job_id = created.get_json()["id"]
    began = time.monotonic()
    validate_job(job_id)
    run_job(job_id)
    took = time.monotonic() - began
    return client.get(f"/v1/fine_tuning/jobs/{job_id}", headers=AUTH).get_json(), took


def events_of(client, job_id: str) -> list[dict]:
    url = f"/v1/fine_tuning/jobs/{job_id}/events?limit=100"
    return client.get(url, headers=AUTH).get_json()["data"]


def losses(client, job_id: str) -> list[tuple[int, float]]:
    return sorted(
        (e["data"]["step"], e["data"]["train_loss"])
        for e in events_of(client, job_id)
        if e["type"] == "metrics"
    )


def test_mlflow_receives_the_jobs_metrics(platform, mlflow_url: str):
    client, file_id = platform(mlflow_url)
    integration = {"type": "mlflow", "mlflow": {"experiment": "jobs", "run_name": "e2e"}}
    job, _ = train(client, file_id, [integration])
    assert job["status"] == "succeeded", job
    assert job["integrations"] == [integration]

    mlflow = MlflowClient(mlflow_url)
    experiment = mlflow.get_experiment_by_name("jobs")
    (run,) = mlflow.search_runs([experiment.experiment_id],
                                filter_string=f"tags.`{JOB_TAG}` = '{job['id']}'")  # fmt: skip
    assert run.info.status == "FINISHED" and run.info.run_name == "e2e"
    history = mlflow.get_metric_history(run.info.run_id, "train_loss")
    assert [(m.step, m.value) for m in history] == losses(client, job["id"])
    assert run.data.params["hyperparameters.n_epochs"] == "1"
    assert run.data.params["seed"] == "7"
    assert run.data.tags["dorado.fine_tuned_model"] == job["fine_tuned_model"]
    settings = load_settings()
    adapter = f"{settings.storage_url}/{artifacts.adapter_key(job['id'])}"
    assert run.data.tags["dorado.adapter_uri"] == adapter


def test_a_tracker_outage_leaves_the_jobs_result_unchanged(platform):
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens: every call is refused
    client, file_id = platform(dead)
    plain, plain_took = train(client, file_id, None)
    tracked, tracked_took = train(
        client, file_id, [{"type": "mlflow", "mlflow": {"experiment": "down"}}]
    )
    assert plain["status"] == tracked["status"] == "succeeded"
    assert plain["trained_tokens"] == tracked["trained_tokens"]
    assert losses(client, tracked["id"]) == losses(client, plain["id"])
    assert losses(client, plain["id"])  # guards the comparison
    # The tracker's retries (about 1.5 s in all) ran beside the training, not in it.
    assert tracked_took < plain_took + 10
    warnings = [e for e in events_of(client, tracked["id"]) if e["level"] == "warn"]
    assert len(warnings) == 1 and "MLflow was unreachable" in warnings[0]["message"]
    assert "Training goes on unaffected" in warnings[0]["message"]
