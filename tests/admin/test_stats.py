"""``dorado-admin stats`` figures from known rows (PostgreSQL), and the same through the API."""

from __future__ import annotations

from datetime import timedelta

import pytest

from api import create_app
from core.db.engine import session_scope
from core.db.models import Job, Worker
from core.observability.stats import percentiles
from core.tenancy import auth
from core.timeutil import utcnow
from tests.admin.catalog_support import admin_json, prepare_platform, run_admin

API_KEY = "dor-stats-test-key-012345678"
MIN, HOUR, DAY = 60, 3600, 86400


def _job(
    session,
    org_id: str,
    name: str,
    status: str,
    *,
    created: float,
    wait: float | None = None,
    run: float | None = None,
    tokens: int | None = None,
    worker: str | None = None,
) -> None:
    """A job created ``created`` seconds ago, started ``wait`` s later, finished ``run`` s after
    its start."""
    now = utcnow()
    created_at = now - timedelta(seconds=created)
    started_at = created_at + timedelta(seconds=wait) if wait is not None else None
    finished_at = started_at + timedelta(seconds=run) if run is not None else None
    session.add(
        Job(
            id=f"ftjob-stats-{name}",
            organization_id=org_id,
            model="tiny-random-llama",
            status=status,
            training_file="file-x",
            hyperparameters={},
            adapter={},
            method={},
            seed=1,
            result_files=[],
            options={},
            created_at=created_at,
            started_at=started_at,
            finished_at=finished_at,
            trained_tokens=tokens,
            worker=worker,
            attempt=1,
            pause_requested=False,
        )
    )


@pytest.fixture
def known(tmp_path, postgres_url, monkeypatch):
    env, settings = prepare_platform(tmp_path / "home", postgres_url, None, API_KEY, monkeypatch)
    with session_scope(settings.database_url) as session:
        alpha = auth.create_organization(session, "alpha")
        beta = auth.create_organization(session, "beta")
        session.add_all(
            [
                Worker(name="w-gpu", hostname="h1", pool="default", gpus=2),
                Worker(name="w-cpu", hostname="h2", pool="default", gpus=0),
            ]
        )
        _job(
            session,
            alpha.id,
            "a1",
            "succeeded",
            created=3 * DAY,
            wait=MIN,
            run=HOUR,
            tokens=1000,
            worker="w-gpu",
        )
        _job(
            session,
            alpha.id,
            "a2",
            "failed",
            created=2 * DAY,
            wait=2 * MIN,
            run=30 * MIN,
            worker="w-gpu",
        )
        _job(
            session,
            alpha.id,
            "a3",
            "succeeded",
            created=DAY,
            wait=5 * MIN,
            run=10 * MIN,
            tokens=500,
            worker="w-cpu",
        )
        _job(session, alpha.id, "a4", "queued", created=HOUR)
        _job(session, beta.id, "b1", "running", created=2 * DAY, wait=30, worker="w-gpu")
        # Created and started before the period, finished inside it (one day of it).
        _job(
            session,
            beta.id,
            "b2",
            "succeeded",
            created=10 * DAY,
            wait=MIN,
            run=4 * DAY - MIN,
            tokens=7000,
            worker="w-gpu",
        )
        _job(
            session,
            beta.id,
            "b3",
            "succeeded",
            created=20 * DAY,
            wait=MIN,
            run=DAY,
            tokens=99,
            worker="w-gpu",
        )  # entirely before the period
    return env, settings, alpha.id, beta.id


def test_percentiles_interpolate_between_ranks():
    assert percentiles([30, 60, 120, 300]) == {"count": 4, "p50": 90.0, "p90": 246.0, "p99": 294.6}
    assert percentiles([]) == {"count": 0, "p50": None, "p90": None, "p99": None}
    assert percentiles([5]) == {"count": 1, "p50": 5, "p90": 5, "p99": 5}


def test_stats_from_known_rows(known):
    env, settings, alpha, beta = known
    data = admin_json(env, "stats", "--since", "7d")
    assert data["jobs"] == 5
    assert data["jobs_by_status"] == {"failed": 1, "queued": 1, "running": 1, "succeeded": 2}
    assert data["queue_wait_seconds"] == {"count": 4, "p50": 90.0, "p90": 246.0, "p99": 294.6}
    runs = sorted([HOUR, 30 * MIN, 10 * MIN, 4 * DAY - MIN])
    assert data["run_time_seconds"] == percentiles(runs)
    assert data["run_time_seconds"]["p50"] == 2700.0
    orgs = {o["organization_id"]: o for o in data["organizations"]}
    assert set(orgs) == {alpha, beta}
    a = orgs[alpha]
    assert (a["name"], a["jobs"], a["trained_tokens"]) == ("alpha", 4, 1500)
    assert a["by_status"] == {"failed": 1, "queued": 1, "succeeded": 2}
    assert a["gpu_hours"] == pytest.approx(2 * 1 + 2 * 0.5 + 0, abs=1e-3)
    assert a["run_hours"] == pytest.approx(1 + 0.5 + 1 / 6, abs=1e-3)
    b = orgs[beta]
    assert (b["jobs"], b["trained_tokens"]) == (1, 7000)
    # b1 has run ~48 h so far; b2 ran 24 h of the period; both on the 2-GPU worker.
    assert b["run_hours"] == pytest.approx(48 + 24, abs=0.05)
    assert b["gpu_hours"] == pytest.approx(2 * (48 + 24), abs=0.1)
    assert data["trained_tokens"] == 8500

    only_alpha = admin_json(env, "stats", "--since", "7d", "--org", alpha)
    assert only_alpha["jobs"] == 4 and only_alpha["trained_tokens"] == 1500
    assert [o["organization_id"] for o in only_alpha["organizations"]] == [alpha]
    assert only_alpha["queue_wait_seconds"]["count"] == 3
    last_day = admin_json(env, "stats", "--since", "36h")
    assert last_day["jobs_by_status"] == {"queued": 1, "succeeded": 1}

    table = run_admin(env, "stats")
    assert table.returncode == 0 and "alpha" in table.stdout and "p90" in table.stdout
    for bad in (["--since", "a week"], ["--org", "org-nope"]):
        failed = run_admin(env, "stats", *bad)
        assert failed.returncode == 1 and "error" in failed.stderr

    client = create_app(settings).test_client()
    resp = client.get(
        f"/v1/admin/stats?since=7d&organization_id={alpha}",
        headers={"Authorization": f"Bearer {API_KEY}"},
    )
    assert resp.status_code == 200
    assert resp.get_json()["jobs_by_status"] == only_alpha["jobs_by_status"]
    assert (
        client.get(
            "/v1/admin/stats?since=forever", headers={"Authorization": f"Bearer {API_KEY}"}
        ).status_code
        == 400
    )
