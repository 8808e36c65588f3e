"""``dorado-admin gc`` on PostgreSQL and an S3 server: exactly the unreferenced objects go,
everything a row points to stays readable, ``--dry-run`` deletes nothing."""

from __future__ import annotations

import io
import os
import time
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from api import create_app
from core.bootstrap import prepare_database
from core.db.engine import session_scope
from core.db.models import AuditEvent, Checkpoint, Job, Model, Organization
from core.jobs.checkpoints import checkpoint_prefix
from core.settings import load_settings
from core.storage import files, quota
from core.storage.objects import LocalStore, ObjectStore, open_store
from core.tenancy import auth
from core.timeutil import utcnow
from tests.admin.catalog_support import admin_json, prepare_platform, run_admin, store_env

API_KEY = "dor-gc-test-key-0123456789"
TRAIN = (
    b'{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]}\n'
) * 10


def _put(store: ObjectStore, key: str, size: int = 10) -> str:
    store.put_fileobj(key, io.BytesIO(key.encode()[:size].ljust(size, b".")))
    return key


def _job(
    session,
    org_id: str,
    file_id: str,
    status: str,
    *,
    finished_days_ago: float | None,
    adapter: bool = False,
) -> Job:
    now = utcnow()
    job = Job(
        id=f"ftjob-gc{status}{int((finished_days_ago or 0) * 10)}",
        organization_id=org_id,
        model="tiny-random-llama",
        status=status,
        training_file=file_id,
        hyperparameters={"n_epochs": 1, "batch_size": 1, "learning_rate_multiplier": 1},
        adapter={
            "type": "lora",
            "r": 4,
            "alpha": 8,
            "dropout": 0.0,
            "target_modules": "all-linear",
        },
        method={"type": "supervised"},
        seed=1,
        result_files=[],
        options={},
        created_at=now - timedelta(days=40),
        started_at=now - timedelta(days=40),
        finished_at=(
            now - timedelta(days=finished_days_ago) if finished_days_ago is not None else None
        ),
        attempt=1,
        pause_requested=False,
        adapter_key=f"jobs/ftjob-gc{status}{int((finished_days_ago or 0) * 10)}/adapter.tar.gz"
        if adapter
        else None,
    )
    session.add(job)
    session.flush()
    return job


def _checkpoint(
    session, store: ObjectStore, job_id: str, step: int, *, row: bool = True
) -> list[str]:
    prefix = checkpoint_prefix(job_id, step)
    keys = [_put(store, f"{prefix}/adapter.tar.gz", 30), _put(store, f"{prefix}/optimizer.pt", 50)]
    if row:
        session.add(
            Checkpoint(
                id=f"ftckpt_{job_id[-8:]}{step}",
                job_id=job_id,
                step_number=step,
                epoch=1,
                reason="epoch",
                metrics={},
                storage_prefix=prefix,
                adapter_key=keys[0],
                created_at=utcnow(),
            )
        )
    return keys


def _outputs(store: ObjectStore, job_id: str) -> list[str]:
    return [
        _put(store, f"jobs/{job_id}/adapter.tar.gz", 40),
        _put(store, f"jobs/{job_id}/adapter/adapter_config.json", 20),
        _put(store, f"jobs/{job_id}/adapter/adapter_model.safetensors", 60),
        _put(store, f"jobs/{job_id}/merged.tar.gz", 70),
    ]


def build_world(store: ObjectStore, database_url: str) -> tuple[set[str], set[str], set[str]]:
    """Data of every kind. Returns (referenced keys, garbage keys, keys outside gc's
    namespaces)."""
    keep: set[str] = set()
    garbage: set[str] = set()
    with session_scope(database_url) as session:
        org = session.scalars(select(Organization)).first()
        live = files.create_file(
            session,
            store,
            org.id,
            filename="train.jsonl",
            purpose="fine-tune",
            content=io.BytesIO(TRAIN),
            size=len(TRAIN),
        )
        keep.add(live.storage_key)
        gone = files.create_file(
            session,
            store,
            org.id,
            filename="old.jsonl",
            purpose="fine-tune",
            content=io.BytesIO(TRAIN),
            size=len(TRAIN),
        )
        garbage.add(files.delete_file(session, org.id, gone.id))  # row deleted, object stayed
        garbage.add(_put(store, "files/file-orphanupload"))  # an upload whose row never came

        # Succeeded recently: everything kept (and a checkpoint dir without a row goes).
        recent = _job(session, org.id, live.id, "succeeded", finished_days_ago=1, adapter=True)
        keep.update(_outputs(store, recent.id))
        for step in (10, 20, 30):
            keep.update(_checkpoint(session, store, recent.id, step))
        garbage.update(_checkpoint(session, store, recent.id, 5, row=False))
        session.add(
            Model(
                id=f"ft:tiny-random-llama:default::{recent.id[-8:]}",
                kind="fine-tuned",
                owned_by=org.id,
                organization_id=org.id,
                job_id=recent.id,
                source=recent.adapter_key,
                created_at=utcnow(),
            )
        )

        # Succeeded 30 days ago: retention keeps its latest checkpoint and its adapter.
        old = _job(session, org.id, live.id, "succeeded", finished_days_ago=30, adapter=True)
        keep.update(_outputs(store, old.id))
        garbage.update(_checkpoint(session, store, old.id, 10))
        garbage.update(_checkpoint(session, store, old.id, 20))
        keep.update(_checkpoint(session, store, old.id, 30))

        # Failed: its checkpoint stays (a retry resumes from it); an adapter it uploaded before
        # losing the job and a checkpoint without a row go.
        failed = _job(session, org.id, live.id, "failed", finished_days_ago=2)
        keep.update(_checkpoint(session, store, failed.id, 4))
        garbage.update(_checkpoint(session, store, failed.id, 8, row=False))
        garbage.add(_put(store, f"jobs/{failed.id}/adapter.tar.gz"))

        # Running: a checkpoint uploaded before its row commits is never touched.
        running = _job(session, org.id, live.id, "running", finished_days_ago=None)
        keep.update(_checkpoint(session, store, running.id, 3, row=False))

        # A job whose row is gone.
        garbage.update(_outputs(store, "ftjob-deletedlongago"))

        # Models: a registered one stays, a removed one's weights and GGUF go.
        session.add(
            Model(
                id="custom-model",
                kind="base",
                owned_by="dorado",
                builtin=False,
                source="dir:/x",
                created_at=utcnow(),
            )
        )
        keep.update(
            {
                _put(store, "models/custom-model/config.json"),
                _put(store, "models/custom-model/.complete", 0),
            }
        )
        garbage.update(
            {
                _put(store, "models/removed-model/model.safetensors", 80),
                _put(store, "model-sources/removed-model/model.gguf", 90),
            }
        )
    outside = {_put(store, "backups/db.dump")}
    return keep, garbage, outside


def all_keys(store: ObjectStore) -> set[str]:
    return {
        o.key
        for ns in ("files", "jobs", "models", "model-sources", "backups")
        for o in store.list_objects(ns)
    }


@pytest.fixture
def world(tmp_path, postgres_url, s3_server, monkeypatch):
    env, settings = prepare_platform(
        tmp_path / "home", postgres_url, s3_server, API_KEY, monkeypatch
    )
    store = open_store(settings)
    keep, garbage, outside = build_world(store, settings.database_url)
    return env, settings, store, keep, garbage, outside


def test_gc_deletes_exactly_the_unreferenced_objects(world):
    env, settings, store, keep, garbage, outside = world
    before = all_keys(store)
    assert before == keep | garbage | outside
    contents = {key: b"".join(store.iter_chunks(key)) for key in keep | outside}

    dry = admin_json(env, "gc", "--dry-run", "--grace", "0s")
    assert dry["dry_run"] is True
    assert {o["key"] for o in dry["objects"]} == garbage
    sizes = {
        o.key: o.size
        for ns in ("files", "jobs", "models", "model-sources")
        for o in store.list_objects(ns)
    }
    assert dry["deleted_bytes"] == sum(sizes[k] for k in garbage) > 0
    assert len(dry["checkpoints"]) == 2  # the 30-day-old job's steps 10 and 20
    assert all_keys(store) == before, "--dry-run deleted something"
    table = run_admin(env, "gc", "--dry-run", "--grace", "0s")
    assert table.returncode == 0 and "Would delete" in table.stdout

    # Everything is younger than the default grace period (24 h): nothing goes.
    young = admin_json(env, "gc")
    assert young["deleted_objects"] == 0 and young["kept_young_objects"] == len(garbage)
    assert all_keys(store) == before

    done = admin_json(env, "gc", "--grace", "0s")
    assert {o["key"] for o in done["objects"]} == garbage
    assert all_keys(store) == keep | outside
    for key in keep | outside:  # every referenced object still reads in full
        assert b"".join(store.iter_chunks(key)) == contents[key]
    with session_scope(settings.database_url) as session:
        steps = {(c.job_id, c.step_number) for c in session.scalars(select(Checkpoint))}
        assert ("ftjob-gcsucceeded300", 10) not in steps
        assert ("ftjob-gcsucceeded300", 30) in steps
        assert ("ftjob-gcsucceeded10", 10) in steps and ("ftjob-gcfailed20", 4) in steps
        for row in session.scalars(select(Checkpoint)):  # every row's objects exist
            assert store.exists(row.adapter_key)
        audit = session.scalars(select(AuditEvent).where(AuditEvent.action == "storage.gc")).all()
        assert [a.details["deleted_objects"] for a in audit] == [0, len(garbage)]
        assert audit[-1].actor.startswith("cli:")

    again = admin_json(env, "gc", "--grace", "0s")
    assert again["deleted_objects"] == 0 and again["pruned_checkpoints"] == 0


def test_gc_api_and_bad_options(world):
    env, settings, store, keep, garbage, outside = world
    client = create_app(settings).test_client()
    headers = {"Authorization": f"Bearer {API_KEY}"}
    resp = client.post("/v1/admin/gc", json={"dry_run": True, "grace": "0s"}, headers=headers)
    assert resp.status_code == 200, resp.get_json()
    assert {o["key"] for o in resp.get_json()["objects"]} == garbage
    assert all_keys(store) == keep | garbage | outside
    bad = client.post("/v1/admin/gc", json={"dry_run": "yes"}, headers=headers)
    assert bad.status_code == 400 and bad.get_json()["error"]["param"] == "dry_run"

    # A key of an organization that is not an operator is refused.
    with session_scope(settings.database_url) as session:
        other = auth.create_organization(session, "tenant")
        auth.add_key(session, other, "dor-gc-tenant-key-000000", scope="admin")
    refused = client.post(
        "/v1/admin/gc",
        json={"dry_run": True},
        headers={"Authorization": "Bearer dor-gc-tenant-key-000000"},
    )
    assert refused.status_code == 403

    failed = run_admin(env, "gc", "--grace", "soon")
    assert failed.returncode != 0 and "Invalid period" in failed.stderr
    assert all_keys(store) == keep | garbage | outside


def test_grace_period_keeps_recent_objects_on_a_local_store(tmp_path, postgres_url, monkeypatch):
    """Local-directory store: orphans aged by mtime go only once older than --grace."""
    env = store_env(tmp_path / "home", postgres_url, None)
    env["DORADO_STORAGE_URL"] = f"file://{tmp_path / 'objects'}"
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = load_settings()
    prepare_database(settings)
    store = LocalStore(tmp_path / "objects")
    old = _put(store, "files/file-oldorphan")
    new = _put(store, "jobs/ftjob-nosuchjob/adapter.tar.gz")
    two_hours_ago = time.time() - 2 * 3600
    os.utime(Path(tmp_path / "objects" / old), (two_hours_ago, two_hours_ago))
    report = admin_json(env, "gc", "--grace", "1h")
    assert [o["key"] for o in report["objects"]] == [old]
    assert report["kept_young_objects"] == 1
    assert not store.exists(old) and store.exists(new)


def test_gc_frees_the_storage_quota_of_jobs_that_lost_objects(world):
    """A finished job's retention-pruned checkpoints leave its stored_bytes, and with it the
    organization's storage usage; a dry run changes neither."""
    env, settings, store, keep, garbage, outside = world
    old_job = "ftjob-gcsucceeded300"
    with session_scope(settings.database_url) as session:
        job_ids = list(session.scalars(select(Job.id)))
        for job_id in job_ids:  # as the worker left them
            quota.refresh_job_bytes(session, store, job_id)
        org_id = session.get(Job, old_job).organization_id
        used_before = quota.storage_used(session, org_id)
        old_before = session.get(Job, old_job).stored_bytes
    pruned = {k for k in garbage if k.startswith(f"jobs/{old_job}/checkpoints/")}
    pruned_bytes = sum(o.size for o in store.list_objects(f"jobs/{old_job}/") if o.key in pruned)
    # Garbage of jobs that have rows (the deleted job's objects were never counted).
    counted = {k for k in garbage if k.split("/")[1] in job_ids}
    counted_bytes = sum(o.size for o in store.list_objects("jobs/") if o.key in counted)
    assert pruned_bytes > 0 and counted_bytes > pruned_bytes

    admin_json(env, "gc", "--dry-run", "--grace", "0s")
    with session_scope(settings.database_url) as session:
        assert quota.storage_used(session, org_id) == used_before

    done = admin_json(env, "gc", "--grace", "0s")
    assert {o["key"] for o in done["objects"]} == garbage
    with session_scope(settings.database_url) as session:
        assert session.get(Job, old_job).stored_bytes == old_before - pruned_bytes
        for job_id in job_ids:  # every job's count matches what it still stores
            stored = sum(o.size for o in store.list_objects(f"jobs/{job_id}/"))
            assert session.get(Job, job_id).stored_bytes == stored
        assert quota.storage_used(session, org_id) == used_before - counted_bytes
