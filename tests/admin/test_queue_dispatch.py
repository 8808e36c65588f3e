"""Fair dispatch through the core service, on PostgreSQL (FOR UPDATE SKIP LOCKED) and SQLite:
priority first, then the organization with the fewest running jobs (then least recently
served), then the oldest job; quotas at creation and at dispatch; what `queue` shows is
the order workers really follow."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import update

from core.db.engine import session_scope
from core.db.models import Job
from core.errors import Conflict, QuotaExceeded
from core.jobs import admin as job_admin
from core.jobs import lifecycle as jobs
from core.jobs.status import FailureCode
from core.scheduling import dispatch as scheduling
from core.scheduling import order as queue_order
from tests.admin.helpers import make_job, make_org

ACTOR = job_admin.Actor("cli:test")


def claim(url: str, worker: str = "w1", pool: str = "default") -> str | None:
    with session_scope(url) as session:
        got = scheduling.claim_next(session, pool=pool, worker=worker, lease_seconds=60)
    return got.job_id if got else None


def finish(url: str, job_id: str) -> None:
    with session_scope(url) as session:
        attempt = session.get(Job, job_id).attempt
        assert jobs.fail_job(
            session, job_id, attempt, code=FailureCode.INTERNAL_ERROR, message="test over"
        )


def shown_order(url: str) -> list[str]:
    with session_scope(url) as session:
        return [e.job.id for e in queue_order.dispatch_order(session) if e.position]


def test_fair_share_across_organizations(url):
    with session_scope(url) as session:
        a, b, c = (make_org(session, n) for n in ("a", "b", "c"))
        a_jobs = [make_job(session, a) for _ in range(6)]
        b_job, c_job = make_job(session, b), make_job(session, c)
    expected = [a_jobs[0], b_job, c_job, *a_jobs[1:]]
    assert shown_order(url) == expected
    # Claimed while the earlier ones still run: B and C go before A's second job.
    assert [claim(url) for _ in range(8)] == expected
    assert claim(url) is None


def test_fair_share_when_jobs_finish_in_between(url):
    with session_scope(url) as session:
        a, b = make_org(session, "a"), make_org(session, "b")
        a_jobs = [make_job(session, a) for _ in range(3)]
        b_jobs = [make_job(session, b) for _ in range(2)]
    order = []
    for _ in range(5):
        assert shown_order(url)[0] == (got := claim(url))
        order.append(got)
        finish(url, got)
    # Nobody runs anything between claims: the least recently served organization goes.
    assert order == [a_jobs[0], b_jobs[0], a_jobs[1], b_jobs[1], a_jobs[2]]


def test_priority_bump_and_priority_change_apply_at_next_dispatch(url):
    with session_scope(url) as session:
        a, b = make_org(session, "a"), make_org(session, "b")
        a_jobs = [make_job(session, a) for _ in range(3)]
        b_job = make_job(session, b)
    with session_scope(url) as session:
        job_admin.set_priority(session, a_jobs[2], 5, ACTOR)
    assert shown_order(url)[0] == a_jobs[2]
    assert claim(url) == a_jobs[2]  # higher priority beats fair share and age
    with session_scope(url) as session:
        bumped = job_admin.bump(session, a_jobs[1], ACTOR)
        assert bumped.priority == 1
    assert claim(url) == a_jobs[1]
    with session_scope(url) as session:
        job_admin.set_priority(session, a_jobs[0], -1, ACTOR)
    assert [claim(url), claim(url)] == [b_job, a_jobs[0]]
    with session_scope(url) as session, pytest.raises(Conflict):
        job_admin.bump(session, b_job, ACTOR)  # running: nothing to move


def test_max_running_jobs_holds_an_organization_back(url):
    with session_scope(url) as session:
        a = make_org(session, "a", max_running_jobs=1)
        b = make_org(session, "b")
        a1, a2 = make_job(session, a), make_job(session, a)
        b1 = make_job(session, b)
    assert claim(url) == a1
    with session_scope(url) as session:
        held = {e.job.id: e.held for e in queue_order.dispatch_order(session)}
        assert held[a2] == "organization at max_running_jobs (1)"
        assert scheduling.next_held(session, a) == (a2, "default")
    assert claim(url) == b1
    assert claim(url) is None  # only A's job is left, and A is at its quota
    finish(url, a1)
    assert claim(url) == a2


def test_max_queued_jobs_at_creation(url):
    with session_scope(url) as session:
        a = make_org(session, "a", max_queued_jobs=2)
        make_job(session, a)
        make_job(session, a, queued=False)  # validating counts as waiting too
    with session_scope(url) as session, pytest.raises(QuotaExceeded, match="limit"):
        make_job(session, a)
    assert claim(url)  # one starts: a slot frees
    with session_scope(url) as session:
        make_job(session, a)


def test_pools_and_draining(url):
    from core.scheduling import workers

    with session_scope(url) as session:
        a = make_org(session, "a")
        workers.register(session, workers.WorkerInfo("big@h", "h", 1, "big", 1, 80_000))
        workers.register(session, workers.WorkerInfo("small@h", "h", 2, "small", 1, 24_000))
        small_job = make_job(session, a)  # tiny model: the smallest GPU pool that fits
        big_job = make_job(session, a, options={"pool": "big"})
        assert session.get(Job, small_job).pool == "small"
        workers.set_draining(session, "small@h", True)
    assert claim(url, "big@h", "big") == big_job
    assert claim(url, "small@h", "small") is None  # drained
    with session_scope(url) as session:
        workers.set_draining(session, "small@h", False)
    assert claim(url, "small@h", "small") == small_job


def test_concurrent_claims_take_distinct_jobs_and_respect_quota(url):
    if url.startswith("sqlite"):
        pytest.skip("SQLite has one writer: claims cannot overlap")
    with session_scope(url) as session:
        a = make_org(session, "a", max_running_jobs=2)
        for _ in range(6):
            make_job(session, a)
    results: list[str | None] = []
    barrier = threading.Barrier(6)

    def worker(i: int) -> None:
        barrier.wait()
        results.append(claim(url, f"w{i}"))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    claimed = [r for r in results if r]
    assert len(claimed) == 2 and len(set(claimed)) == 2


def test_requeue_and_retry_transitions(url):
    with session_scope(url) as session:
        a = make_org(session, "a")
        job_id = make_job(session, a)
    with session_scope(url) as session, pytest.raises(Conflict, match="failed or cancelled"):
        job_admin.retry(session, job_id, ACTOR)
    assert claim(url) == job_id
    with session_scope(url) as session:
        job = job_admin.requeue(session, job_id, ACTOR)
        assert (job.status, job.worker) == ("queued", None)
    assert claim(url, "w2") == job_id
    finish(url, job_id)
    with session_scope(url) as session:
        job, step = job_admin.retry(session, job_id, ACTOR)
        assert (job.status, job.error, step) == ("queued", None, None)
        session.execute(update(Job).where(Job.id == job_id).values(status="succeeded"))
    with session_scope(url) as session, pytest.raises(Conflict):
        job_admin.requeue(session, job_id, ACTOR)


def test_pool_rule_with_declared_pools(url, monkeypatch):
    from core.errors import InvalidRequest
    from core.scheduling import pools
    from core.settings import load_settings

    monkeypatch.setenv("DORADO_POOLS", "default=23034, a100-80gb=81920")
    declared = load_settings().declared_pools
    assert declared == {"default": 23034, "a100-80gb": 81920}
    from core.jobs.planner import Architecture
    from tests.core.test_planner import LLAMA_8B, LLAMA_70B, SMOLLM2

    with session_scope(url) as session:

        def choose(config: dict | None, requested: str | None = None) -> str:
            arch = Architecture.from_config(config) if config else None
            return pools.choose_pool(session, requested, declared, architecture=arch).pool

        # Sized from config.json, not the name: the smallest pool that fits.
        assert choose(SMOLLM2) == "default"
        assert choose({**LLAMA_8B, "max_position_embeddings": 2048}) == "a100-80gb"
        with pytest.raises(InvalidRequest, match="It would fit with"):
            choose(LLAMA_70B)  # fits nowhere: refused, with what would fit
        assert choose(None) == "default"  # architecture unknown
        assert choose(SMOLLM2, "a100-80gb") == "a100-80gb"
        with pytest.raises(InvalidRequest, match="Known pools: a100-80gb, default"):
            choose(SMOLLM2, "h100")
        with pytest.raises(InvalidRequest, match="Invalid pool name"):
            choose(SMOLLM2, "Bad Pool!")


def test_a_pools_workers_give_its_jobs_their_gpus_to_shard_over(url):
    """A registered worker's GPU count is what the planner shards over (core.scheduling.pools
    .pool_gpus): Llama 8B fits four 32 GB GPUs only with FSDP."""
    from core.jobs.planner import Architecture, PlanRequest
    from core.scheduling import pools, workers
    from tests.core.test_planner import LLAMA_8B

    with session_scope(url) as session:
        workers.register(session, workers.WorkerInfo("v4@h", "h", 1, "v100x4", 4, 32768))
        workers.register(session, workers.WorkerInfo("v8@h", "h", 2, "v100x4", 8, 32768))
        workers.register(session, workers.WorkerInfo("cpu@h", "h", 3, "cpu", 0, None))
        assert pools.pool_gpus(session) == {"v100x4": 4}  # the fewest; CPU workers have none
        arch = Architecture.from_config(LLAMA_8B)
        request = PlanRequest(max_seq_length=2048)
        placed = pools.choose_pool(session, "v100x4", architecture=arch, request=request)
        assert placed.plan is not None
        assert (placed.plan.sharding, placed.plan.gpus) == ("fsdp", 4)
