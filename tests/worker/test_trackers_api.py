"""A job's ``integrations`` as OpenAI's API and the openai SDK send them (validated, stored,
echoed), and the organization's W&B API key: set by admin keys through the API and
``dorado-admin``, sealed at rest, never shown again; a job whose tracker cannot be served is
refused with a clear 400."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import openai
import pytest
from flask.testing import FlaskClient
from sqlalchemy import select, text
from werkzeug.serving import make_server

from api import create_app
from core.bootstrap import prepare_database
from core.db.engine import session_scope
from core.db.models import Organization
from core.settings import Settings, load_settings
from core.tenancy import auth, tracker_credentials
from tests.conftest import ROOT

KEY = "dor-integrations-test-key-00000"
AUTH = {"Authorization": f"Bearer {KEY}"}
WANDB = {"type": "wandb", "wandb": {"project": "p", "name": "n", "entity": "e", "tags": ["t"]}}
MLFLOW = {"type": "mlflow", "mlflow": {"experiment": "x", "run_name": None}}
W_AND_B_KEY = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def settings(postgres_url: str, tmp_path: Path, monkeypatch) -> Settings:
    monkeypatch.setenv("DORADO_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DORADO_DATABASE_URL", postgres_url)
    monkeypatch.setenv("DORADO_BOOTSTRAP_API_KEY", KEY)
    monkeypatch.delenv("DORADO_BROKER_URL", raising=False)
    monkeypatch.delenv("DORADO_MLFLOW_TRACKING_URI", raising=False)
    settings = load_settings()
    prepare_database(settings)
    return settings


@pytest.fixture
def client(settings: Settings) -> FlaskClient:
    return create_app(settings).test_client()


@pytest.fixture
def file_id(client: FlaskClient) -> str:
    example = {
        "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    }
    line = json.dumps(example).encode() + b"\n"
    resp = client.post(
        "/v1/files",
        headers=AUTH,
        content_type="multipart/form-data",
        data={"file": (io.BytesIO(line * 10), "t.jsonl"), "purpose": "fine-tune"},
    )
    assert resp.status_code == 200, resp.get_json()
    return resp.get_json()["id"]


def create_job(client: FlaskClient, file_id: str, integrations):
    body = {"model": "tiny-random-llama", "training_file": file_id, "integrations": integrations}
    return client.post("/v1/fine_tuning/jobs", json=body, headers=AUTH)


def org_id(settings: Settings) -> str:
    with session_scope(settings.database_url) as session:
        return auth.find_key(session, KEY).organization_id


def test_the_wandb_key_is_write_only_and_sealed_at_rest(client, settings):
    assert client.get("/v1/organization/integrations", headers=AUTH).get_json()["wandb"] == {
        "api_key_set": False,
        "api_key_hint": None,
    }
    resp = client.post(
        "/v1/organization/integrations", headers=AUTH, json={"wandb_api_key": W_AND_B_KEY}
    )
    assert resp.status_code == 200, resp.get_json()
    shown = client.get("/v1/organization/integrations", headers=AUTH).get_json()
    assert shown["wandb"] == {"api_key_set": True, "api_key_hint": "...4567"}
    with session_scope(settings.database_url) as session:
        dump = repr(session.execute(text("SELECT * FROM organizations")).all())
        assert W_AND_B_KEY not in dump
        box = tracker_credentials.credentials_box(settings)
        assert tracker_credentials.wandb_api_key(session, box, org_id(settings)) == W_AND_B_KEY
    removed = client.post(
        "/v1/organization/integrations", headers=AUTH, json={"wandb_api_key": None}
    ).get_json()
    assert removed["wandb"]["api_key_set"] is False


@pytest.mark.parametrize(
    "body",
    [{}, {"wandb_api_key": ""}, {"wandb_api_key": 5}, {"wandb_api_key": "a b"}, {"x": "y"}],
)
def test_bad_key_bodies_are_clear_400s(client, body):
    resp = client.post("/v1/organization/integrations", headers=AUTH, json=body)
    assert resp.status_code == 400, resp.get_json()
    assert resp.get_json()["error"]["param"] in ("wandb_api_key", "x")


def test_only_admin_keys_set_it(client, settings):
    with session_scope(settings.database_url) as session:
        member = auth.create_key(session, org_id(settings), name="m", scope="member").secret
    headers = {"Authorization": f"Bearer {member}"}
    resp = client.post(
        "/v1/organization/integrations", headers=headers, json={"wandb_api_key": "k"}
    )
    assert resp.status_code == 403
    assert client.get("/v1/organization/integrations", headers=headers).status_code == 403


def test_wandb_needs_the_organizations_key_and_is_echoed(client, file_id):
    refused = create_job(client, file_id, [WANDB])
    assert refused.status_code == 400
    error = refused.get_json()["error"]
    assert error["param"] == "integrations[0]" and error["code"] == "integration_unavailable"
    assert "/v1/organization/integrations" in error["message"]
    client.post("/v1/organization/integrations", headers=AUTH, json={"wandb_api_key": "k" * 40})
    created = create_job(client, file_id, [WANDB])
    assert created.status_code == 200, created.get_json()
    assert created.get_json()["integrations"] == [WANDB]
    job = client.get(f"/v1/fine_tuning/jobs/{created.get_json()['id']}", headers=AUTH)
    assert job.get_json()["integrations"] == [WANDB]
    assert "integrations" not in job.get_json()["options"]


def test_mlflow_needs_the_operators_tracking_server(settings, file_id, client):
    refused = create_job(client, file_id, [MLFLOW])
    assert refused.status_code == 400
    assert "DORADO_MLFLOW_TRACKING_URI" in refused.get_json()["error"]["message"]
    enabled = settings.model_copy(update={"mlflow_tracking_uri": "http://127.0.0.1:9"})
    created = create_job(create_app(enabled).test_client(), file_id, [MLFLOW])
    assert created.status_code == 200, created.get_json()
    assert created.get_json()["integrations"] == [MLFLOW]


@pytest.mark.parametrize(
    "integrations, loc",
    [
        ([{"type": "comet", "comet": {}}], "integrations"),
        ([{"type": "wandb"}], "wandb"),
        ([{"type": "wandb", "wandb": {}}], "project"),
        ([{"type": "wandb", "wandb": {"project": "p", "api_key": "k"}}], "api_key"),
        ([{"type": "wandb", "wandb": {"project": "p", "tags": "t"}}], "tags"),
        ([{"type": "mlflow", "mlflow": {"run_name": "r"}}], "experiment"),
        ("wandb", "integrations"),
    ],
)
def test_malformed_integrations_are_400s_naming_the_field(client, file_id, integrations, loc):
    resp = create_job(client, file_id, integrations)
    assert resp.status_code == 400, resp.get_json()
    assert loc in (resp.get_json()["error"]["param"] or ""), resp.get_json()


def test_a_malformed_tracking_uri_is_a_startup_error(monkeypatch):
    from core.settings import SettingsError

    monkeypatch.setenv("DORADO_MLFLOW_TRACKING_URI", "mlflow:5000")
    with pytest.raises(SettingsError, match="DORADO_MLFLOW_TRACKING_URI='mlflow:5000'"):
        load_settings()


@contextmanager
def serve(settings: Settings) -> Iterator[str]:
    server = make_server("127.0.0.1", 0, create_app(settings), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/v1"
    finally:
        server.shutdown()


def test_the_openai_sdk_sends_and_reads_integrations(settings, client, file_id):
    client.post("/v1/organization/integrations", headers=AUTH, json={"wandb_api_key": "k" * 40})
    with serve(settings) as url:
        sdk = openai.OpenAI(base_url=url, api_key=KEY, max_retries=0)
        job = sdk.fine_tuning.jobs.create(
            model="tiny-random-llama",
            training_file=file_id,
            integrations=[{"type": "wandb", "wandb": {"project": "sdk", "tags": ["a", "b"]}}],
        )
        (integration,) = job.integrations
        assert integration.type == "wandb" and integration.wandb.project == "sdk"
        assert integration.wandb.tags == ["a", "b"] and integration.wandb.entity is None
        assert sdk.fine_tuning.jobs.retrieve(job.id).integrations[0].wandb.project == "sdk"


def test_dorado_admin_sets_and_removes_the_key(settings):
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "DORADO_HOME": str(settings.home),
        "DORADO_DATABASE_URL": settings.database_url,
        "COLUMNS": "200",
    }
    admin = [str(Path(sys.executable).parent / "dorado-admin"), "orgs", "set-wandb-key"]
    org = org_id(settings)
    done = subprocess.run(
        [*admin, org, "--json"], input=W_AND_B_KEY + "\n", env=env, capture_output=True,
        text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert W_AND_B_KEY not in done.stdout and '"api_key_hint": "...4567"' in done.stdout
    with session_scope(settings.database_url) as session:
        box = tracker_credentials.credentials_box(settings)  # the same platform secret file
        assert tracker_credentials.wandb_api_key(session, box, org) == W_AND_B_KEY
    removed = subprocess.run([*admin, org, "--remove"], env=env, capture_output=True, text=True,
                             timeout=60)  # fmt: skip
    assert removed.returncode == 0, removed.stderr
    with session_scope(settings.database_url) as session:
        assert session.scalar(select(Organization.wandb_api_key_hint)) is None
    missing = subprocess.run([*admin, "org-nope", "--remove"], env=env, capture_output=True,
                             text=True, timeout=60)  # fmt: skip
    assert missing.returncode != 0 and "No such organization" in missing.stderr
