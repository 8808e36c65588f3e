"""PostgreSQL restarts while clients poll: the API answers 503 with Retry-After (which the
SDK honours) while it is down, and recovers by itself, losing nothing."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import requests
from openai import OpenAI

from tests.conftest import MODEL_CACHE
from tests.e2e.platform import free_port
from tests.faults.cluster import Cluster
from tests.faults.helpers import upload_pirate

PG_BIN = next(iter(sorted(Path("/usr/lib/postgresql").glob("*/bin"))), None)


def as_postgres(*command: str) -> None:
    subprocess.run(["runuser", "-u", "postgres", "--", *command], check=True, capture_output=True)


@pytest.fixture
def own_postgres():
    """A throwaway PostgreSQL cluster on its own port, so the test may stop and start it."""
    if PG_BIN is None or shutil.which("runuser") is None:
        pytest.skip("PostgreSQL server binaries are not installed")
    # Outside pytest's root-only tmp tree: the postgres user must reach the folder.
    data = Path(tempfile.mkdtemp(prefix="dorado-pg-"))
    shutil.chown(data, "postgres", "postgres")
    port = free_port()
    as_postgres(str(PG_BIN / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres")
    ctl = [
        str(PG_BIN / "pg_ctl"),
        "-D",
        str(data),
        "-w",
        "-o",
        f"-p {port} -k {data} -c listen_addresses=127.0.0.1",
    ]

    def start() -> None:
        as_postgres(*ctl[:4], *ctl[4:], "-l", str(data / "log"), "start")

    def stop() -> None:
        as_postgres(*ctl[:4], "-m", "fast", "stop")

    start()
    as_postgres(str(PG_BIN / "createdb"), "-h", "127.0.0.1", "-p", str(port), "dorado")
    yield {
        "url": f"postgresql+psycopg2://postgres@127.0.0.1:{port}/dorado?connect_timeout=3",
        "start": start,
        "stop": stop,
    }
    subprocess.run(
        ["runuser", "-u", "postgres", "--", *ctl[:4], "-m", "immediate", "stop"],
        capture_output=True,
    )
    shutil.rmtree(data, ignore_errors=True)


def test_api_answers_503_while_postgres_is_down_and_recovers(tmp_path, own_postgres):
    cluster = Cluster(
        tmp_path / "home",
        "dor-outage-key-000000000",
        MODEL_CACHE,
        {"DORADO_DATABASE_URL": own_postgres["url"]},
    )
    cluster.migrate()
    cluster.start_api()
    try:
        client = OpenAI(base_url=cluster.base_url, api_key=cluster.api_key, max_retries=0)
        training = upload_pirate(client)
        job = client.fine_tuning.jobs.create(model="tiny-random-llama", training_file=training.id)
        headers = {"Authorization": f"Bearer {cluster.api_key}"}
        url = f"{cluster.base_url}/fine_tuning/jobs/{job.id}"
        assert requests.get(url, headers=headers, timeout=10).status_code == 200

        own_postgres["stop"]()
        down = requests.get(url, headers=headers, timeout=30)
        assert down.status_code == 503, down.text
        assert down.headers["Retry-After"]
        assert down.json()["error"]["code"] == "service_unavailable"

        own_postgres["start"]()
        deadline = time.monotonic() + 30
        while (resp := requests.get(url, headers=headers, timeout=30)).status_code != 200:
            assert time.monotonic() < deadline, resp.text
            time.sleep(0.5)
        # The SDK, with its default retries, rides out the restart as a pause.
        patient = OpenAI(base_url=cluster.base_url, api_key=cluster.api_key, max_retries=5)
        assert patient.fine_tuning.jobs.retrieve(job.id).id == job.id
        assert [f.id for f in client.files.list()] == [training.id]  # nothing lost
    finally:
        cluster.stop()
