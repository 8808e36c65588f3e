"""``dorado-admin queue``, ``jobs`` and ``workers`` as real subprocesses against PostgreSQL:
``--json`` parses, tables render for people, failures exit non-zero with a clear message."""

from __future__ import annotations

import pytest

from core.db.engine import session_scope
from core.db.migrate import upgrade
from core.scheduling import workers
from tests.admin.helpers import dorado_admin, dorado_admin_json, make_job, make_org


@pytest.fixture
def env(postgres_url, tmp_path):
    upgrade(postgres_url)
    # No broker is reachable: actions that re-queue must still succeed (the sweeper sends).
    return {
        "DORADO_DATABASE_URL": postgres_url,
        "DORADO_HOME": str(tmp_path / "home"),
        "DORADO_BROKER_URL": "redis://127.0.0.1:1/0",
        "COLUMNS": "220",
    }


def test_queue_and_jobs_commands(env):
    url = env["DORADO_DATABASE_URL"]
    with session_scope(url) as session:
        a, b = make_org(session, "acme"), make_org(session, "beta")
        a1, a2, b1 = make_job(session, a), make_job(session, a), make_job(session, b)

    queue = dorado_admin_json(env, "queue")
    assert [(e["id"], e["position"], e["organization"]) for e in queue] == [
        (a1, 1, "acme"),
        (b1, 2, "beta"),
        (a2, 3, "acme"),
    ]
    assert queue[0]["adapter"] == "dora r16" and queue[0]["model"] == "tiny-random-llama"
    human = dorado_admin(env, "queue").stdout
    assert "Queue: 0 running, 3 queued" in human and a1 in human

    assert dorado_admin_json(env, "jobs", "bump", a2)["priority"] == 1
    assert dorado_admin_json(env, "queue")[0]["id"] == a2
    assert dorado_admin_json(env, "jobs", "priority", b1, "3")["priority"] == 3
    assert [e["id"] for e in dorado_admin_json(env, "queue")] == [b1, a2, a1]

    shown = dorado_admin_json(env, "jobs", "show", a1)
    assert (shown["status"], shown["organization"], shown["pool"]) == ("queued", "acme", "default")
    assert "Files validated, moving job to queued state" in shown["recent_events"]
    assert "Job " + a1 in dorado_admin(env, "jobs", "show", a1).stdout

    cancelled = dorado_admin_json(env, "jobs", "cancel", a1)
    assert cancelled["status"] == "cancelled" and cancelled["message"] == f"Cancelled {a1}"
    retried = dorado_admin_json(env, "jobs", "retry", a1)
    assert (retried["status"], retried["resume_step"]) == ("queued", None)
    assert "starts from the beginning" in retried["message"]
    assert dorado_admin_json(env, "jobs", "requeue", a1)["status"] == "queued"

    audit = dorado_admin_json(env, "audit")
    actions = {(e["action"], e["object_id"]) for e in audit}
    assert {("job.cancel", a1), ("job.retry", a1), ("job.priority", b1)} <= actions
    assert all(e["actor"].startswith("cli:") for e in audit)


def test_failures_exit_non_zero_with_a_message(env):
    url = env["DORADO_DATABASE_URL"]
    with session_scope(url) as session:
        job = make_job(session, make_org(session, "acme"))
    unknown = dorado_admin(env, "jobs", "show", "ftjob-nope", ok=False)
    assert unknown.returncode == 1
    assert "No such fine-tuning job: ftjob-nope" in unknown.stderr
    illegal = dorado_admin(env, "jobs", "retry", job, "--json", ok=False)
    assert illegal.returncode == 1 and illegal.stdout == ""
    assert "only a failed or cancelled job can be retried" in illegal.stderr
    assert dorado_admin(env, "jobs", "priority", job, "high", ok=False).returncode == 2
    assert dorado_admin(env, "workers", "drain", "nobody", ok=False).returncode == 1
    assert dorado_admin(env, "jobs", "requeue", job, "--pool", "nope", ok=False).returncode == 1


def test_workers_commands(env):
    url = env["DORADO_DATABASE_URL"]
    with session_scope(url) as session:
        workers.register(session, workers.WorkerInfo("gpu1@host", "host", 7, "a100", 8, 81_000))
        workers.register(session, workers.WorkerInfo("old@host", "host", 8, "default", 0, None))
        workers.mark_stopped(session, "old@host")
    listed = dorado_admin_json(env, "workers")
    assert [(w["name"], w["state"], w["pool"], w["gpus"]) for w in listed] == [
        ("gpu1@host", "idle", "a100", 8)
    ]
    assert {w["name"] for w in dorado_admin_json(env, "workers", "list", "--all")} == {
        "gpu1@host",
        "old@host",
    }
    assert "81000 MiB" in dorado_admin(env, "workers").stdout
    assert dorado_admin_json(env, "workers", "drain", "gpu1@host")["state"] == "drained"
    again = dorado_admin(env, "workers", "drain", "gpu1@host", ok=False)
    assert again.returncode == 1 and "already draining" in again.stderr
    assert dorado_admin_json(env, "workers", "undrain", "gpu1@host")["draining"] is False
    alive = dorado_admin(env, "workers", "forget", "gpu1@host", ok=False)
    assert alive.returncode == 1 and "only a stopped or lost worker" in alive.stderr
    assert dorado_admin_json(env, "workers", "forget", "old@host")["deleted"] is True
    assert [w["name"] for w in dorado_admin_json(env, "workers", "--all")] == ["gpu1@host"]
