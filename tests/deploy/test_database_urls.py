"""DORADO_DATABASE_URL as people write it: `dorado migrate` and the API work with postgresql://
and postgres:// URLs; a URL that cannot work stops `dorado migrate`, `dorado run` and the
worker with one readable line and a non-zero exit."""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys

import pytest

from api import create_app
from core.settings import load_settings
from tests.conftest import fresh_postgres_database
from tests.deploy.conftest import ROOT

API_KEY = "dor-test-url-key-0123456789abcdef"


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def clean_env(tmp_path, **settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("DORADO_")}
    env.update(PYTHONPATH=str(ROOT), DORADO_HOME=str(tmp_path / "home"), **settings)
    return env


def dorado(tmp_path, *args: str, timeout: float = 120, **settings: str):
    return subprocess.run(
        [sys.executable, "-m", "cli.main", *args],
        env=clean_env(tmp_path, **settings),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.parametrize("scheme", ["postgresql", "postgres"])
def test_migrate_and_serve_with_a_url_as_people_write_it(tmp_path, monkeypatch, scheme) -> None:
    with fresh_postgres_database("dorado_url") as url:
        written = url.replace("postgresql+psycopg2", scheme, 1)
        done = dorado(
            tmp_path, "migrate", DORADO_DATABASE_URL=written, DORADO_BOOTSTRAP_API_KEY=API_KEY
        )
        assert done.returncode == 0, done.stderr

        for name, value in clean_env(tmp_path, DORADO_DATABASE_URL=written).items():
            monkeypatch.setenv(name, value)
        settings = load_settings()
        assert settings.database_url == url
        client = create_app(settings).test_client()
        response = client.get("/v1/models", headers={"Authorization": f"Bearer {API_KEY}"})
        assert response.status_code == 200, response.get_data(as_text=True)
        assert response.get_json()["object"] == "list"
        assert client.get("/readyz").get_json()["checks"]["database"]["ok"] is True


def bad_urls() -> list[tuple[str, str]]:
    cases = [
        ("mysql://dorado:hunter2@db/dorado", "unsupported database 'mysql'"),
        ("not a url", "not a database URL"),
        (f"postgres://dorado:hunter2@127.0.0.1:{closed_port()}/dorado", "cannot connect to"),
    ]
    if importlib.util.find_spec("psycopg") is None:
        cases.append(("postgresql+psycopg://dorado@db/dorado", "'psycopg' driver is not installed"))
    return cases


def assert_one_line(stderr: str, expected: str) -> None:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert "Traceback" not in stderr, stderr
    assert len(lines) == 1, stderr
    assert lines[0].startswith("Error: DORADO_DATABASE_URL"), stderr
    assert expected in lines[0] and "hunter2" not in lines[0]


@pytest.mark.parametrize(("url", "expected"), bad_urls())
def test_migrate_stops_on_a_url_that_cannot_work(tmp_path, url, expected) -> None:
    done = dorado(tmp_path, "migrate", DORADO_DATABASE_URL=url)
    assert done.returncode != 0
    assert_one_line(done.stderr, expected)


def test_run_stops_before_starting_anything(tmp_path) -> None:
    url = f"postgresql://dorado@127.0.0.1:{closed_port()}/dorado"
    done = dorado(tmp_path, "run", "--skip-models", DORADO_DATABASE_URL=url)
    assert done.returncode != 0
    assert_one_line(done.stderr, "Connection refused")


def test_a_bad_setting_stops_the_launcher_with_one_line(tmp_path) -> None:
    done = dorado(tmp_path, "migrate", DORADO_MAX_JOB_SECONDS="abc")
    assert done.returncode != 0
    assert done.stderr.strip() == "Error: DORADO_MAX_JOB_SECONDS='abc': not an integer"


@pytest.mark.parametrize(
    ("setting", "value", "expected"),
    [
        ("DORADO_DATABASE_URL", "postgres://dorado@127.0.0.1:{port}/dorado", "cannot connect"),
        ("DORADO_LEASE_SECONDS", "soon", "DORADO_LEASE_SECONDS='soon': not an integer"),
    ],
)
def test_worker_stops_with_one_line(tmp_path, setting, value, expected) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "worker.celery_app:app", "worker"]
        + ["--pool", "threads", "-Q", "dorado.jobs", "-n", "url-test@%h"],
        env=clean_env(tmp_path, **{setting: value.format(port=closed_port())}),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0
    assert "Traceback" not in done.stderr, done.stderr
    message = [line for line in done.stderr.splitlines() if line.startswith("dorado worker:")]
    assert len(message) == 1 and expected in message[0], done.stderr
