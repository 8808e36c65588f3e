"""``/v1/webhook_endpoints``: CRUD by admin keys of the organization (also through the
official SDK's ``client.webhooks``), the secret shown once and sealed at rest, SSRF refusals
as clear 400s, the delivery log and resend."""

from __future__ import annotations

import threading
import time
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
from core.db.models import WebhookEndpoint
from core.jobs import lifecycle as jobs
from core.settings import Settings, SettingsError, load_settings
from core.tenancy import auth
from core.webhooks.delivery import DeliveryLoop
from core.webhooks.endpoints import secret_box
from tests.webhooks.conftest import FAST, add_training_file, running_job

KEY = "dor-webhooks-test-key-000000000"
AUTH = {"Authorization": f"Bearer {KEY}"}
ALL = ["fine_tuning.job.succeeded", "fine_tuning.job.failed", "fine_tuning.job.cancelled"]


@pytest.fixture
def settings(postgres_url: str, tmp_path: Path, monkeypatch) -> Settings:
    monkeypatch.setenv("DORADO_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DORADO_DATABASE_URL", postgres_url)
    monkeypatch.setenv("DORADO_BOOTSTRAP_API_KEY", KEY)
    monkeypatch.delenv("DORADO_BROKER_URL", raising=False)
    monkeypatch.delenv("DORADO_WEBHOOKS_ALLOW_PRIVATE", raising=False)
    settings = load_settings()
    prepare_database(settings)
    return settings


@pytest.fixture
def client(settings: Settings) -> FlaskClient:
    return create_app(settings).test_client()


@pytest.fixture
def private_client(settings: Settings) -> FlaskClient:
    """An API whose operator allows loopback receivers (DORADO_WEBHOOKS_ALLOW_PRIVATE=1)."""
    return create_app(settings.model_copy(update={"webhooks_allow_private": True})).test_client()


def org_of_key(settings: Settings) -> str:
    with session_scope(settings.database_url) as session:
        return auth.find_key(session, KEY).organization_id


def other_key(settings: Settings, scope: str, org_id: str | None = None) -> dict[str, str]:
    with session_scope(settings.database_url) as session:
        org_id = org_id or auth.create_organization(session, "other").id
        new = auth.create_key(session, org_id, name=scope, scope=scope)
        return {"Authorization": f"Bearer {new.secret}"}


def create(client: FlaskClient, url: str, headers=AUTH, **extra):
    return client.post(
        "/v1/webhook_endpoints",
        headers=headers,
        json={"url": url, "event_types": ["fine_tuning.job.failed"], **extra},
    )


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080/hook",
        "http://169.254.169.254/latest/meta-data/",
        "http://internal.corp.example/hook",  # resolves to 10.1.2.3
        "http://localhost/hook",
        "http://[::1]/hook",
        "http://[::ffff:10.0.0.1]/hook",
        "http://10.0.0.1/hook",
        "http://0.0.0.0/hook",
    ],
)
def test_urls_reaching_inward_are_refused_with_a_clear_400(client, resolver, url):
    resolver["internal.corp.example"] = ["10.1.2.3"]
    resp = create(client, url)
    assert resp.status_code == 400, resp.get_json()
    error = resp.get_json()["error"]
    assert error["param"] == "url" and error["code"] == "invalid_url"
    assert "non-public address" in error["message"]
    assert "DORADO_WEBHOOKS_ALLOW_PRIVATE" in error["message"]


@pytest.mark.parametrize(
    "body, param",
    [
        ({"url": "ftp://example.com/x", "event_types": ALL}, "url"),
        ({"url": "http://user:pw@example.com/x", "event_types": ALL}, "url"),
        ({"url": 3, "event_types": ALL}, "url"),
        ({"url": "http://no-such-host.invalid/x", "event_types": ALL}, "url"),
        ({"url": "http://93.184.215.14/x", "event_types": []}, "event_types"),
        ({"url": "http://93.184.215.14/x", "event_types": ["job.done"]}, "event_types"),
        ({"url": "http://93.184.215.14/x", "event_types": ALL, "secret": "mine"}, "secret"),
    ],
)
def test_bad_endpoints_are_refused_with_the_field_named(client, body, param):
    resp = client.post("/v1/webhook_endpoints", headers=AUTH, json=body)
    assert resp.status_code == 400, resp.get_json()
    assert resp.get_json()["error"]["param"] == param


def test_a_public_address_is_accepted_and_private_ones_when_the_operator_allows(
    client, private_client
):
    assert create(client, "https://93.184.215.14/hook").status_code == 200
    assert create(client, "http://127.0.0.1:9/hook").status_code == 400
    assert create(private_client, "http://127.0.0.1:9/hook").status_code == 200


def test_a_malformed_webhook_setting_is_a_startup_error_naming_it(settings, monkeypatch):
    monkeypatch.setenv("DORADO_WEBHOOKS_TIMEOUT_SECONDS", "soon")
    monkeypatch.setenv("DORADO_WEBHOOKS_MAX_ATTEMPTS", "0")
    with pytest.raises(SettingsError) as raised:
        load_settings()
    assert str(raised.value) == (
        "DORADO_WEBHOOKS_TIMEOUT_SECONDS='soon': not a number; "
        "DORADO_WEBHOOKS_MAX_ATTEMPTS='0': must be at least 1"
    )


def test_crud_secret_once_and_sealed_at_rest(private_client, settings):
    client = private_client
    created = create(client, "http://127.0.0.1:9/a", name="ci").get_json()
    secret = created["signing_secret"]
    assert secret.startswith("whsec_") and created["object"] == "webhook_endpoint"
    assert created["signing_secret_hint"] == f"whsec_...{secret[-4:]}"
    endpoint_id = created["id"]
    listed = client.get("/v1/webhook_endpoints", headers=AUTH).get_json()
    assert [e["id"] for e in listed["data"]] == [endpoint_id]
    one = client.get(f"/v1/webhook_endpoints/{endpoint_id}", headers=AUTH).get_json()
    assert "signing_secret" not in one and "signing_secret" not in listed["data"][0]
    changed = client.post(
        f"/v1/webhook_endpoints/{endpoint_id}",
        headers=AUTH,
        json={"url": "http://127.0.0.1:9/b", "event_types": ALL, "enabled": False},
    ).get_json()
    assert (changed["url"], changed["event_types"], changed["enabled"]) == (
        "http://127.0.0.1:9/b",
        ALL,
        False,
    )
    # At rest: sealed with the platform secret, never the secret itself.
    with session_scope(settings.database_url) as session:
        dump = session.execute(text("SELECT * FROM webhook_endpoints")).all()
        row = session.scalar(select(WebhookEndpoint))
        assert secret not in repr(dump) and secret[6:] not in repr(dump)
        assert secret_box(settings).open(row.secret_encrypted) == secret
    gone = client.delete(f"/v1/webhook_endpoints/{endpoint_id}", headers=AUTH).get_json()
    assert gone == {"id": endpoint_id, "object": "webhook_endpoint.deleted", "deleted": True}
    resp = client.get(f"/v1/webhook_endpoints/{endpoint_id}", headers=AUTH)
    assert resp.status_code == 404


def test_only_admin_keys_of_the_organization(private_client, settings):
    client = private_client
    endpoint_id = create(client, "http://127.0.0.1:9/a").get_json()["id"]
    member = other_key(settings, "member", org_of_key(settings))
    for method, path in [
        ("GET", "/v1/webhook_endpoints"),
        ("POST", "/v1/webhook_endpoints"),
        ("GET", f"/v1/webhook_endpoints/{endpoint_id}"),
        ("GET", f"/v1/webhook_endpoints/{endpoint_id}/deliveries"),
    ]:
        resp = client.open(path, method=method, headers=member, json={})
        assert resp.status_code == 403, (method, path)
        assert resp.get_json()["error"]["code"] == "insufficient_scope"
    stranger = other_key(settings, "admin")
    assert client.get("/v1/webhook_endpoints", headers=stranger).get_json()["data"] == []
    for method, path in [
        ("GET", f"/v1/webhook_endpoints/{endpoint_id}"),
        ("POST", f"/v1/webhook_endpoints/{endpoint_id}"),
        ("DELETE", f"/v1/webhook_endpoints/{endpoint_id}"),
        ("GET", f"/v1/webhook_endpoints/{endpoint_id}/deliveries"),
    ]:
        resp = client.open(path, method=method, headers=stranger, json={"name": "x"})
        assert resp.status_code == 404, (method, path)


def test_delivery_log_and_resend(private_client, settings, receiver):
    client = private_client
    endpoint_id = create(client, receiver.url()).get_json()["id"]
    org = org_of_key(settings)
    add_training_file(settings.database_url, org)
    job, attempt = running_job(settings.database_url, org)
    with session_scope(settings.database_url) as session:
        jobs.fail_job(session, job, attempt, code="boom", message="it broke")
    loop = DeliveryLoop(settings.database_url, secret_box(settings), FAST)
    assert loop.run_once() == 1
    receiver.wait_for(1)
    for _ in range(100):  # the outcome is recorded just after the receiver answered
        log = client.get(f"/v1/webhook_endpoints/{endpoint_id}/deliveries", headers=AUTH)
        entry = log.get_json()["data"][0]
        if entry["status"] != "pending":
            break
        time.sleep(0.05)
    assert entry["status"] == "succeeded" and entry["attempts"] == 1
    assert entry["last_status_code"] == 200 and entry["job_id"] == job
    assert entry["event_type"] == "fine_tuning.job.failed" and entry["next_attempt_at"] is None
    resent = client.post(f"/v1/webhook_deliveries/{entry['id']}/resend", headers=AUTH)
    assert resent.status_code == 200 and resent.get_json()["status"] == "pending"
    assert loop.run_once() == 1
    got = receiver.wait_for(2)
    assert got[0].headers["webhook-id"] == got[1].headers["webhook-id"] == entry["id"]
    bad = client.get(f"/v1/webhook_endpoints/{endpoint_id}/deliveries?status=nope", headers=AUTH)
    assert bad.status_code == 400


@contextmanager
def serve(settings: Settings) -> Iterator[str]:
    """The API over real HTTP on loopback, for the openai SDK."""
    server = make_server("127.0.0.1", 0, create_app(settings), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/v1"
    server.shutdown()


def test_the_official_sdk_manages_endpoints(settings):
    with serve(settings.model_copy(update={"webhooks_allow_private": True})) as url:
        client = openai.OpenAI(base_url=url, api_key=KEY, max_retries=0)
        manage_with_the_sdk(client)
    with serve(settings) as url:
        client = openai.OpenAI(base_url=url, api_key=KEY, max_retries=0)
        with pytest.raises(openai.BadRequestError, match="non-public address"):
            client.webhooks.create(name="x", url="http://169.254.169.254/", event_types=ALL)


def manage_with_the_sdk(client: openai.OpenAI) -> None:
    created = client.webhooks.create(
        name="ci", url="http://127.0.0.1:9/hook", event_types=["fine_tuning.job.succeeded"]
    )
    assert created.signing_secret.startswith("whsec_")
    assert [e.id for e in client.webhooks.list()] == [created.id]
    updated = client.webhooks.update(created.id, event_types=ALL)
    assert updated.event_types == ALL and client.webhooks.retrieve(created.id).name == "ci"
    assert client.webhooks.delete(created.id).deleted is True
