"""Two organizations with data of every kind, trained for real by the worker code run in
this process (tiny model), behind the real Flask app on a fresh PostgreSQL database."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient

from tests.conftest import MODEL_CACHE, fresh_postgres_database

BOOTSTRAP_KEY = "dor-security-bootstrap-000000000"


@dataclass
class Tenant:
    """One organization, its keys (admin, member, read-only) and its objects."""

    name: str
    org_id: str
    keys: dict[str, str]  # scope -> secret
    key_ids: dict[str, str] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)
    jobs: list[str] = field(default_factory=list)  # [trained job, queued job]
    checkpoints: list[str] = field(default_factory=list)
    events: list[str] = field(default_factory=list)
    models: list[str] = field(default_factory=list)
    webhook_endpoints: list[str] = field(default_factory=list)
    webhook_deliveries: list[str] = field(default_factory=list)

    def headers(self, scope: str = "admin") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[scope]}"}

    def all_ids(self) -> list[str]:
        return [
            self.org_id,
            *self.key_ids.values(),
            *self.files,
            *self.jobs,
            *self.checkpoints,
            *self.events,
            *self.models,
            *self.webhook_endpoints,
            *self.webhook_deliveries,
        ]


@dataclass
class World:
    app: Flask
    client: FlaskClient
    home: Path
    database_url: str
    a: Tenant  # the bootstrap (operator) organization
    b: Tenant  # an ordinary organization


@pytest.fixture(scope="module")
def module_postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database shared by one test module."""
    with fresh_postgres_database("dorado_sec") as url:
        yield url


def chat_lines(n: int, tag: str) -> bytes:
    rows = [
        {
            "messages": [
                {"role": "user", "content": f"{tag} question {i}?"},
                {"role": "assistant", "content": f"{tag} answer {i}."},
            ]
        }
        for i in range(n)
    ]
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def upload(
    client: FlaskClient, headers: dict[str, str], body: bytes, filename: str = "train.jsonl"
):
    return client.post(
        "/v1/files",
        headers=headers,
        content_type="multipart/form-data",
        data={"file": (io.BytesIO(body), filename), "purpose": "fine-tune"},
    )


def _populate(client: FlaskClient, tenant: Tenant) -> None:
    """A file, a trained job (checkpoints, events, adapter, fine-tuned model, result file)
    and a queued job, through the API; training by the worker's own task functions."""
    from worker.tasks import run_job, validate_job

    headers = tenant.headers()
    resp = upload(client, headers, chat_lines(10, tenant.name), f"{tenant.name}.jsonl")
    assert resp.status_code == 200, resp.get_json()
    tenant.files.append(resp.get_json()["id"])
    hook = client.post(
        "/v1/webhook_endpoints",
        headers=headers,
        json={"url": "http://127.0.0.1:9/hook", "event_types": ["fine_tuning.job.succeeded"]},
    )
    assert hook.status_code == 200, hook.get_json()
    tenant.webhook_endpoints.append(hook.get_json()["id"])
    body = {
        "model": "tiny-random-llama",
        "training_file": tenant.files[0],
        "hyperparameters": {"n_epochs": 1, "batch_size": 5},
        "checkpoint_every_n_steps": 1,
        "suffix": tenant.name,
    }
    for _ in range(2):
        resp = client.post("/v1/fine_tuning/jobs", json=body, headers=headers)
        assert resp.status_code == 200, resp.get_json()
        tenant.jobs.append(resp.get_json()["id"])
    trained = tenant.jobs[0]
    validate_job(trained)
    run_job(trained)
    job = client.get(f"/v1/fine_tuning/jobs/{trained}", headers=headers).get_json()
    assert job["status"] == "succeeded", job
    tenant.models.append(job["fine_tuned_model"])
    tenant.files.extend(job["result_files"])
    ckpts = client.get(f"/v1/fine_tuning/jobs/{trained}/checkpoints", headers=headers).get_json()
    tenant.checkpoints.extend(c["id"] for c in ckpts["data"])
    events = client.get(
        f"/v1/fine_tuning/jobs/{trained}/events?limit=100", headers=headers
    ).get_json()
    tenant.events.extend(e["id"] for e in events["data"])
    log = client.get(
        f"/v1/webhook_endpoints/{tenant.webhook_endpoints[0]}/deliveries", headers=headers
    ).get_json()
    tenant.webhook_deliveries.extend(d["id"] for d in log["data"])
    assert tenant.checkpoints and tenant.events and tenant.files[1:] and tenant.webhook_deliveries


@pytest.fixture(scope="module")
def world(module_postgres_url, tmp_path_factory) -> Iterator[World]:
    from api import create_app
    from core.bootstrap import prepare_database
    from core.db.engine import session_scope
    from core.settings import load_settings
    from core.tenancy import auth

    home = tmp_path_factory.mktemp("security") / "home"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DORADO_HOME", str(home))
        mp.setenv("DORADO_DATABASE_URL", module_postgres_url)
        mp.setenv("DORADO_BOOTSTRAP_API_KEY", BOOTSTRAP_KEY)
        mp.setenv("DORADO_MODEL_CACHE", str(MODEL_CACHE))
        mp.delenv("DORADO_BROKER_URL", raising=False)
        mp.setenv("DORADO_WEBHOOKS_ALLOW_PRIVATE", "1")  # endpoints on loopback (never called)
        settings = load_settings()
        prepare_database(settings)
        tenants = {}
        with session_scope(settings.database_url) as session:
            key_a = auth.find_key(session, BOOTSTRAP_KEY)
            tenants["a"] = Tenant(
                "alpha", key_a.organization_id, {"admin": BOOTSTRAP_KEY}, {"admin": key_a.id}
            )
            org_b = auth.create_organization(session, "beta")
            tenants["b"] = Tenant("beta", org_b.id, {})
            for tenant in tenants.values():
                for scope in ("admin", "member", "read-only"):
                    if scope in tenant.keys:
                        continue
                    new = auth.create_key(session, tenant.org_id, name=scope, scope=scope)
                    tenant.keys[scope], tenant.key_ids[scope] = new.secret, new.row.id
        app = create_app(settings)
        client = app.test_client()
        for tenant in tenants.values():
            _populate(client, tenant)
        yield World(app, client, home, module_postgres_url, tenants["a"], tenants["b"])
