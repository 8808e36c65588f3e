"""/healthz, /readyz and /metrics on a temp DORADO_HOME (SQLite, local store, filesystem broker)."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
from datetime import timedelta

import pytest
from prometheus_client.parser import text_string_to_metric_families

from api import create_app
from core.bootstrap import prepare_database
from core.db.engine import session_scope
from core.db.models import Job, Organization
from core.settings import Settings, load_settings
from core.timeutil import utcnow
from tests.deploy.conftest import ROOT


@pytest.fixture
def settings(tmp_path, monkeypatch) -> Settings:
    monkeypatch.setenv("DORADO_HOME", str(tmp_path / "home"))
    for name in (
        "DORADO_DATABASE_URL",
        "DORADO_BROKER_URL",
        "DORADO_STORAGE_URL",
        "PROMETHEUS_MULTIPROC_DIR",
        "DORADO_METRICS_DIR",
    ):
        monkeypatch.delenv(name, raising=False)
    settings = load_settings()
    prepare_database(settings)
    return settings


def closed_port() -> int:
    """A loopback port nobody listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def add_job(
    settings: Settings, status: str, *, tokens: int | None = None, seconds: float | None = None
) -> None:
    with session_scope(settings.database_url) as session:
        org = session.query(Organization).first()
        now = utcnow()
        session.add(
            Job(
                id=f"ftjob-{os.urandom(8).hex()}",
                organization_id=org.id,
                model="tiny-random-llama",
                status=status,
                training_file="file-x",
                hyperparameters={},
                adapter={},
                method={},
                seed=1,
                trained_tokens=tokens,
                started_at=now - timedelta(seconds=seconds) if seconds is not None else None,
                finished_at=now if seconds is not None else None,
            )
        )


def samples(body: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def test_healthz_needs_no_key_nor_database(settings) -> None:
    broken = settings.model_copy(
        update={"database_url": f"postgresql+psycopg2://x@127.0.0.1:{closed_port()}/x"}
    )
    response = create_app(broken).test_client().get("/healthz")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok"}


def test_readyz_ok(settings) -> None:
    response = create_app(settings).test_client().get("/readyz")
    assert response.status_code == 200
    body = response.get_json()
    assert body["status"] == "ready"
    assert {name: check["ok"] for name, check in body["checks"].items()} == {
        "database": True,
        "object_store": True,
        "broker": True,
    }
    assert body["checks"]["broker"]["skipped"] == "filesystem transport"


def test_readyz_503_when_database_is_down(settings) -> None:
    broken = settings.model_copy(
        update={"database_url": f"postgresql+psycopg2://x@127.0.0.1:{closed_port()}/x"}
    )
    response = create_app(broken).test_client().get("/readyz")
    assert response.status_code == 503
    body = response.get_json()
    assert body["status"] == "unavailable"
    assert body["failing"] == ["database"]
    assert body["checks"]["database"] == {
        "ok": False,
        "error": "OperationalError",
        "ms": body["checks"]["database"]["ms"],
    }
    # Unauthenticated endpoint: no host names or credentials in the answer.
    assert "127.0.0.1" not in response.get_data(as_text=True)


def test_readyz_503_when_broker_is_down(settings) -> None:
    broken = settings.model_copy(update={"broker_url": f"redis://127.0.0.1:{closed_port()}/0"})
    response = create_app(broken).test_client().get("/readyz")
    assert response.status_code == 503
    assert response.get_json()["failing"] == ["broker"]


def test_readyz_503_when_object_store_fails(settings) -> None:
    app = create_app(settings)

    class BrokenStore:
        def list_keys(self, prefix: str) -> list[str]:
            raise ConnectionError("no route to bucket")

    app.extensions["dorado"].store = BrokenStore()
    response = app.test_client().get("/readyz")
    assert response.status_code == 503
    assert response.get_json()["failing"] == ["object_store"]
    assert response.get_json()["checks"]["object_store"]["error"] == "ConnectionError"


def test_metrics(settings) -> None:
    add_job(settings, "queued")
    add_job(settings, "queued")
    add_job(settings, "running")
    add_job(settings, "succeeded", tokens=1000, seconds=10)
    add_job(settings, "succeeded", tokens=500, seconds=30)
    add_job(settings, "failed", seconds=5)
    client = create_app(settings).test_client()
    assert client.get("/healthz").status_code == 200
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.content_type.startswith("text/plain")
    got = samples(response.get_data(as_text=True))
    assert got[("dorado_database_up", ())] == 1
    assert got[("dorado_queue_depth", (("pool", "default"),))] == 2
    assert got[("dorado_jobs", (("status", "queued"),))] == 2
    assert got[("dorado_jobs", (("status", "running"),))] == 1
    assert got[("dorado_jobs", (("status", "succeeded"),))] == 2
    assert got[("dorado_jobs", (("status", "cancelled"),))] == 0
    assert got[("dorado_trained_tokens_total", ())] == 1500
    p50 = got[("dorado_job_duration_seconds", (("quantile", "0.5"), ("status", "succeeded")))]
    p95 = got[("dorado_job_duration_seconds", (("quantile", "0.95"), ("status", "succeeded")))]
    assert p50 == pytest.approx(10, abs=1) and p95 == pytest.approx(30, abs=1)
    assert got[("dorado_job_duration_window_jobs", (("status", "succeeded"),))] == 2
    assert got[("dorado_queue_oldest_age_seconds", (("pool", "default"),))] >= 0
    # The /healthz request above, by route template, method and status.
    assert (
        got[
            (
                "dorado_http_request_duration_seconds_count",
                (("endpoint", "/healthz"), ("method", "GET"), ("status", "200")),
            )
        ]
        >= 1
    )


def test_metrics_and_probes_need_no_api_key(settings) -> None:
    client = create_app(settings).test_client()
    for path in ("/healthz", "/readyz", "/metrics"):
        assert client.get(path).status_code == 200, path
    assert client.get("/v1/models").status_code == 401


def test_http_latency_uses_route_templates(settings) -> None:
    client = create_app(settings).test_client()
    client.get("/v1/fine_tuning/jobs/ftjob-doesnotexist")
    client.get("/no/such/page")
    got = samples(client.get("/metrics").get_data(as_text=True))
    endpoints = {
        dict(labels).get("endpoint")
        for name, labels in got
        if name == "dorado_http_request_duration_seconds_count"
    }
    assert "<unmatched>" in endpoints
    assert not any(e and "ftjob-doesnotexist" in e for e in endpoints)


def test_metrics_when_database_is_down(settings) -> None:
    broken = settings.model_copy(
        update={"database_url": f"postgresql+psycopg2://x@127.0.0.1:{closed_port()}/x"}
    )
    response = create_app(broken).test_client().get("/metrics")
    assert response.status_code == 200
    assert samples(response.get_data(as_text=True))[("dorado_database_up", ())] == 0


MULTIPROCESS_SCRIPT = """
import sys
from api import create_app
from core.bootstrap import prepare_database
from core.settings import load_settings
settings = load_settings()
prepare_database(settings)
client = create_app(settings).test_client()
client.get("/healthz")
sys.stdout.write(client.get("/metrics").get_data(as_text=True))
"""


def test_multiprocess_mode_via_dorado_metrics_dir(tmp_path) -> None:
    # A fresh interpreter: prometheus-client picks its value storage once per process.
    metrics_dir = tmp_path / "metrics"
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("DORADO_", "PROMETHEUS_MULTIPROC"))
    }
    env.update(DORADO_HOME=str(tmp_path / "home"), DORADO_METRICS_DIR=str(metrics_dir))
    result = subprocess.run(
        [sys.executable, "-c", MULTIPROCESS_SCRIPT],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert list(metrics_dir.glob("histogram_*.db")), "no multiprocess files written"
    got = samples(result.stdout)
    assert (
        got[
            (
                "dorado_http_request_duration_seconds_count",
                (("endpoint", "/healthz"), ("method", "GET"), ("status", "200")),
            )
        ]
        == 1
    )
    assert got[("dorado_database_up", ())] == 1


def test_json_log_lines(capsys) -> None:
    from core.observability.jsonlog import JsonFormatter, json_logging_requested

    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("tests.deploy.jsonlog")
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.INFO)
    try:
        logger.warning("published job %s", "ftjob-abc123")
        logger.info("claimed", extra={"job_id": "ftjob-xyz", "attempt": 2})
        logger.error("no job here")
    finally:
        logger.removeHandler(handler)
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert [line.get("job_id") for line in lines] == ["ftjob-abc123", "ftjob-xyz", None]
    assert lines[0]["message"] == "published job ftjob-abc123"
    assert lines[0]["level"] == "WARNING" and lines[0]["logger"] == "tests.deploy.jsonlog"
    assert lines[0]["pid"] == os.getpid() and lines[0]["ts"].endswith("Z")
    assert lines[1]["attempt"] == 2
    assert json_logging_requested() is (os.environ.get("DORADO_LOG_FORMAT") == "json")
