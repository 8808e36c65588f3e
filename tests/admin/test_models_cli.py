"""``dorado-admin models add|list|remove`` against PostgreSQL and an S3 server, the same
through ``/v1/admin/models``, a worker refreshing a re-registered model, GGUF conversion, and
a real worker training a job on a model registered from a directory."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import boto3
import pytest
from openai import OpenAI
from sqlalchemy import select

from api import create_app
from core.bootstrap import prepare_database
from core.catalog import registry as model_registry
from core.db.engine import session_scope
from core.db.models import AuditEvent, Job, Organization
from core.errors import DoradoError, InvalidRequest, NotFound
from core.settings import load_settings
from core.storage.objects import LocalStore, delete_prefix, open_store
from core.tenancy import auth
from core.timeutil import utcnow
from tests.admin.catalog_support import (
    admin_json,
    prepare_platform,
    run_admin,
    store_env,
    tiny_model_dir,
)
from tests.conftest import EXAMPLES
from tests.e2e.flow import wait_for_job
from tests.e2e.platform import Platform
from tests.security.helpers import small_gguf

API_KEY = "dor-models-test-key-01234567"
TENANT_KEY = "dor-models-tenant-key-0000000"


def _variant(tmp: Path, name: str, **changes: bytes | str | None) -> Path:
    """A copy of the tiny model directory with files added, replaced or (None) removed."""
    dest = tmp / name
    shutil.copytree(tiny_model_dir(), dest, ignore=shutil.ignore_patterns(".*"))
    for filename, content in changes.items():
        path = dest / filename.replace("__", ".")
        if content is None:
            path.unlink()
        else:
            path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return dest


def _queued_job(session, org_id: str, model: str) -> str:
    job = Job(
        id=f"ftjob-uses-{model}",
        organization_id=org_id,
        model=model,
        status="queued",
        training_file="file-x",
        hyperparameters={},
        adapter={},
        method={},
        seed=1,
        result_files=[],
        options={},
        created_at=utcnow(),
        attempt=0,
        pause_requested=False,
    )
    session.add(job)
    return job.id


@pytest.fixture
def platform_env(tmp_path, postgres_url, s3_server, monkeypatch):
    env, settings = prepare_platform(
        tmp_path / "home", postgres_url, s3_server, API_KEY, monkeypatch
    )
    with session_scope(settings.database_url) as session:
        tenant = auth.create_organization(session, "tenant")
        auth.add_key(session, tenant, TENANT_KEY, scope="member")
    return env, settings, s3_server


def test_models_add_list_remove(platform_env, tmp_path):
    env, settings, s3 = platform_env
    store = open_store(settings)
    tiny = tiny_model_dir()
    expected = sum(p.stat().st_size for p in tiny.iterdir() if not p.name.startswith("."))

    added = admin_json(env, "models", "add", str(tiny), "--name", "custom-tiny")
    assert added["id"] == "custom-tiny" and added["stored"] is True
    assert expected < added["bytes"] < expected + 100  # + the revision marker
    assert store.exists("models/custom-tiny/model.safetensors")

    # From an S3 prefix (nested folders and hidden files are not copied).
    s3_client = boto3.client(
        "s3",
        endpoint_url=s3["endpoint"],
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
    )
    for path in tiny.iterdir():
        if not path.name.startswith("."):
            s3_client.upload_file(str(path), s3["bucket"], f"incoming/tiny/{path.name}")
    s3_client.put_object(
        Bucket=s3["bucket"], Key="incoming/tiny/original/consolidated.pth", Body=b"pickle"
    )
    from_s3 = admin_json(env, "models", "add", f"s3://{s3['bucket']}/incoming/tiny/")
    assert from_s3["id"] == "tiny" and from_s3["source"].startswith("s3://")
    assert sorted(k.rsplit("/", 1)[1] for k in store.list_keys("models/tiny")) == sorted(
        [p.name for p in tiny.iterdir() if not p.name.startswith(".")] + [".complete"]
    )

    gguf = tmp_path / "Small-Model.gguf"
    small_gguf(gguf)
    with session_scope(settings.database_url) as session:  # in-process: fewer slow spawns
        row = model_registry.add_model(
            session, store, settings, source=str(gguf), name=model_registry.default_name(str(gguf))
        )
        assert (row.id, row.source) == ("small-model", f"gguf:{gguf}")
    assert model_registry.stored_bytes(store, "small-model") == (gguf.stat().st_size, False)

    refusals = {
        "pickle": (
            _variant(tmp_path, "p", pytorch_model__bin=b"\x80\x04pickle"),
            "pickle-based formats",
        ),
        "remote": (
            _variant(
                tmp_path,
                "r",
                config__json=json.dumps({"model_type": "llama", "auto_map": {"AutoModel": "x.Y"}}),
            ),
            "trust_remote_code",
        ),
        "code": (_variant(tmp_path, "c", modeling_custom__py="import os"), "custom code"),
        "fake": (
            _variant(tmp_path, "f", model__safetensors=b"\x80\x04not a safetensors"),
            "not a safetensors",
        ),
        "notemplate": (
            _variant(tmp_path, "t", chat_template__jinja=None, tokenizer_config__json="{}"),
            "chat template",
        ),
        "noweights": (_variant(tmp_path, "w", model__safetensors=None), "safetensors"),
        "notgguf": (tmp_path / "x.gguf", "not a GGUF file"),
    }
    (tmp_path / "x.gguf").write_bytes(b"PK\x03\x04zip")
    for name, (source, message) in refusals.items():
        if name == "pickle":  # through the CLI: exit code and message
            done = run_admin(env, "models", "add", str(source), "--name", f"bad-{name}")
            assert done.returncode == 1, (name, done.stdout, done.stderr)
            assert message in " ".join(done.stderr.split()), (name, done.stderr)
        else:
            with (
                session_scope(settings.database_url) as session,
                pytest.raises(InvalidRequest, match=message),
            ):
                model_registry.add_model(
                    session, store, settings, name=f"bad-{name}", source=str(source)
                )
        assert not store.list_keys(f"models/bad-{name}")
    for name, error in (("custom-tiny", "already exists"), ("Bad Name", "Invalid model name")):
        with (
            session_scope(settings.database_url) as session,
            pytest.raises(DoradoError, match=error),
        ):
            model_registry.add_model(session, store, settings, name=name, source=str(tiny))

    # Every organization sees (and may train) the added base models.
    client = create_app(settings).test_client()
    listed = client.get("/v1/models", headers={"Authorization": f"Bearer {TENANT_KEY}"})
    assert {"custom-tiny", "tiny", "small-model"} <= {m["id"] for m in listed.get_json()["data"]}

    with session_scope(settings.database_url) as session:
        org = session.scalars(select(Organization).where(Organization.name == "tenant")).one()
        job_id = _queued_job(session, org.id, "custom-tiny")
    rows = {m["id"]: m for m in admin_json(env, "models", "list", "--jobs")}
    assert rows["custom-tiny"]["active_jobs"] == 1 and rows["custom-tiny"]["jobs"] == 1
    assert rows["custom-tiny"]["job_ids"] == [
        {"id": job_id, "status": "queued", "organization_id": org.id}
    ]
    assert rows["tiny-random-llama"]["builtin"] is True
    assert rows["custom-tiny"]["bytes"] == added["bytes"]
    table = run_admin(env, "models", "list", "--jobs")
    assert table.returncode == 0 and job_id in table.stdout

    busy = run_admin(env, "models", "remove", "custom-tiny")
    assert busy.returncode == 1 and "unfinished" in busy.stderr and job_id in busy.stderr
    assert store.exists("models/custom-tiny/model.safetensors")
    forced = admin_json(env, "models", "remove", "custom-tiny", "--force")
    assert forced["cancelled_jobs"] == [job_id]
    assert not store.list_keys("models/custom-tiny")
    builtin = run_admin(env, "models", "remove", "tiny-random-llama")
    assert builtin.returncode == 1 and "built-in" in builtin.stderr
    with (
        session_scope(settings.database_url) as session,
        pytest.raises(NotFound, match="No base model"),
    ):
        model_registry.remove_model(session, "custom-tiny")
    with session_scope(settings.database_url) as session:
        assert session.get(Job, job_id).status == "cancelled"
        actions = [
            (a.action, a.object_id)
            for a in session.scalars(
                select(AuditEvent).where(AuditEvent.action.like("model.%")).order_by(AuditEvent.seq)
            )
        ]
    assert actions == [
        ("model.add", "custom-tiny"),
        ("model.add", "tiny"),
        ("model.remove", "custom-tiny"),
    ]

    # The admin API: same services, operator keys only.
    admin = {"Authorization": f"Bearer {API_KEY}"}
    resp = client.post(
        "/v1/admin/models", json={"source": str(tiny), "name": "api-tiny"}, headers=admin
    )
    assert resp.status_code == 200, resp.get_json()
    assert resp.get_json()["bytes"] == added["bytes"]
    bad = client.post(
        "/v1/admin/models", json={"source": str(refusals["pickle"][0])}, headers=admin
    )
    assert bad.status_code == 400 and bad.get_json()["error"]["code"] == "invalid_model"
    assert (
        client.get(
            "/v1/admin/models", headers={"Authorization": f"Bearer {TENANT_KEY}"}
        ).status_code
        == 403
    )
    ids = [
        m["id"] for m in client.get("/v1/admin/models?jobs=true", headers=admin).get_json()["data"]
    ]
    assert "api-tiny" in ids
    assert client.delete("/v1/admin/models/api-tiny", headers=admin).status_code == 200
    assert client.delete("/v1/admin/models/tiny-random-llama", headers=admin).status_code == 403
    assert not store.list_keys("models/api-tiny")


def test_worker_replaces_its_copy_of_a_re_registered_model(tmp_path, postgres_url, monkeypatch):
    """Removed and registered again under the same name: workers use the new weights."""
    from worker.model_store import ensure_model

    monkeypatch.setenv("DORADO_DATABASE_URL", postgres_url)
    monkeypatch.setenv("DORADO_HOME", str(tmp_path / "home"))
    settings = load_settings().model_copy(update={"model_cache_dir": tmp_path / "cache"})
    prepare_database(settings)
    store = LocalStore(tmp_path / "objects")
    first = _variant(tmp_path, "v1", generation_config__json='{"max_length": 11}')
    second = _variant(tmp_path, "v2", generation_config__json='{"max_length": 22}')
    with session_scope(settings.database_url) as session:
        model_registry.add_model(session, store, settings, name="reused", source=str(first))
    cached = ensure_model(settings, store, "reused")
    assert json.loads((cached / "generation_config.json").read_text())["max_length"] == 11
    with session_scope(settings.database_url) as session:
        removed = model_registry.remove_model(session, "reused")
    for prefix in removed.prefixes:
        delete_prefix(store, prefix)
    with session_scope(settings.database_url) as session:
        model_registry.add_model(session, store, settings, name="reused", source=str(second))
    cached = ensure_model(settings, store, "reused")
    assert json.loads((cached / "generation_config.json").read_text())["max_length"] == 22


@pytest.mark.slow
def test_a_registered_gguf_is_converted_once_by_a_worker(tmp_path, postgres_url, monkeypatch):
    from transformers import AutoConfig

    from worker.model_builders import smollm2_gguf_path
    from worker.model_store import ensure_model

    monkeypatch.setenv("DORADO_DATABASE_URL", postgres_url)
    monkeypatch.setenv("DORADO_HOME", str(tmp_path / "home"))
    settings = load_settings().model_copy(update={"model_cache_dir": tmp_path / "cache"})
    prepare_database(settings)
    store = LocalStore(tmp_path / "objects")
    with session_scope(settings.database_url) as session:
        model_registry.add_model(
            session, store, settings, name="smol-gguf", source=str(smollm2_gguf_path())
        )
        assert model_registry.stored_bytes(store, "smol-gguf")[1] is False
    local = ensure_model(settings, store, "smol-gguf")
    assert AutoConfig.from_pretrained(local).model_type == "llama"
    assert (local / "model.safetensors").stat().st_size > 400_000_000
    size, stored = model_registry.stored_bytes(store, "smol-gguf")
    assert stored and size > 400_000_000
    assert store.exists("models/smol-gguf/tokenizer.json")


def test_a_job_trains_on_a_model_added_from_a_directory(
    tmp_path, postgres_url, s3_server, redis_url
):
    """`dorado run` (API, real worker, validator) on PostgreSQL, Redis and S3; the model is
    registered with dorado-admin and reaches the worker through the object store."""
    home = tmp_path / "home"
    env = {**store_env(home, postgres_url, s3_server), "DORADO_BROKER_URL": redis_url}
    platform = Platform(
        home,
        API_KEY,
        tmp_path / "worker-cache",
        {**env, "DORADO_MODEL_CACHE": str(tmp_path / "worker-cache")},
    ).start()
    try:
        added = admin_json(env, "models", "add", str(tiny_model_dir()), "--name", "my-base")
        assert added["stored"]
        client = OpenAI(base_url=platform.base_url, api_key=API_KEY, max_retries=0)
        assert "my-base" in [m.id for m in client.models.list()]
        with open(EXAMPLES / "pirate.jsonl", "rb") as handle:
            training = client.files.create(file=handle, purpose="fine-tune")
        job = client.fine_tuning.jobs.create(
            model="my-base",
            training_file=training.id,
            hyperparameters={"n_epochs": 1, "batch_size": 8},
            extra_body={"adapter": {"type": "lora", "r": 4, "alpha": 8}},
        )
        job = wait_for_job(client, job.id, 240, platform)
        assert job.status == "succeeded", (job.error, platform.log_tail())
        assert job.fine_tuned_model.startswith("ft:my-base:")
        assert (tmp_path / "worker-cache" / "my-base" / "model.safetensors").exists()
        rows = {m["id"]: m for m in admin_json(env, "models", "list", "--jobs")}
        assert rows["my-base"]["job_ids"] == [
            {
                "id": job.id,
                "status": "succeeded",
                "organization_id": rows["my-base"]["job_ids"][0]["organization_id"],
            }
        ]
        removed = admin_json(env, "models", "remove", "my-base")
        assert removed["deleted_objects"] > 0
    finally:
        platform.stop()
