"""Gang booking of multi-node jobs through the core service, on PostgreSQL and SQLite: a job
that needs more hosts than are free books none (never half a gang), a smaller job may pass it
meanwhile, and once enough hosts are free its claimer books them all in one go; booked hosts
join instead of claiming, and bookings end together."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select, update

from core.db.engine import session_scope
from core.db.models import Job, Worker
from core.jobs import lifecycle as jobs
from core.jobs.status import FailureCode, JobStatus
from core.scheduling import dispatch as scheduling
from core.scheduling import gangs, workers
from core.scheduling import order as queue_order
from core.timeutil import utcnow
from tests.admin.helpers import make_job, make_org

RENDEZVOUS = gangs.Rendezvous(address="10.0.0.1", port=29500, ranks_per_node=2)
BEAT = 5.0


def register(url: str, *names: str) -> None:
    with session_scope(url) as session:
        for name in names:
            info = workers.WorkerInfo(name, "host-" + name, 1, "default", 2, 81920)
            workers.register(session, info)


def claim(url: str, worker: str):
    with session_scope(url) as session:
        return scheduling.claim_next(
            session,
            pool="default",
            worker=worker,
            lease_seconds=60,
            heartbeat_seconds=BEAT,
            rendezvous=RENDEZVOUS,
        )


def bookings(url: str) -> dict[str, tuple]:
    with session_scope(url) as session:
        rows = session.scalars(select(Worker).where(Worker.booked_job_id.is_not(None)))
        return {w.name: (w.booked_job_id, w.booked_attempt, w.node_rank) for w in rows}


def status(url: str, job_id: str) -> str:
    with session_scope(url) as session:
        return session.get(Job, job_id).status


def waiting(url: str) -> dict[str, str | None]:
    """What `dorado-admin queue` says each job waits for."""
    with session_scope(url) as session:
        entries = queue_order.dispatch_order(session, heartbeat_seconds=BEAT)
        return {e.job.id: e.waiting for e in entries}


def two_node_job_led_by_a(url: str) -> str:
    """A two-node job that worker "a" claimed, with "b" booked: its id."""
    register(url, "a", "b")
    with session_scope(url) as session:
        org = make_org(session, "o")
        big = make_job(session, org, options={"nodes": 2})
    assert claim(url, "a").job_id == big
    return big


def test_never_half_a_gang_then_all_at_once(url):
    register(url, "a", "b")
    with session_scope(url) as session:
        org = make_org(session, "o")
        big = make_job(session, org, options={"nodes": 3})
        small = make_job(session, org)
    # Three hosts needed, two registered: the big job books nobody and stays queued; the
    # smaller job behind it runs (backfill).
    got = claim(url, "a")
    assert got.job_id == small and got.gang is None
    assert status(url, big) == JobStatus.QUEUED
    assert bookings(url) == {}
    assert claim(url, "b") is None  # b alone (a is busy) is not enough either
    assert bookings(url) == {}
    assert waiting(url) == {big: "needs 3 hosts; pool default has 2 live workers", small: None}
    register(url, "c")
    assert waiting(url)[big] == "waiting for 3 free hosts (2 free now)"

    register(url, "d")
    # a is still busy with the small job: b claims the big one with c and d.
    got = claim(url, "b")
    assert got.job_id == big and got.gang["hosts"] == ["b", "c", "d"]
    assert got.gang["address"] == "10.0.0.1" and got.gang["ranks_per_node"] == 2
    assert bookings(url) == {"c": (big, 1, 1), "d": (big, 1, 2)}
    with session_scope(url) as session:
        listed, _ = jobs.list_events(session, session.get(Job, big), limit=10, after=None)
        events = [e.message for e in listed]
    assert any(m.startswith("Running on 3 hosts: b, c, d") for m in events), events

    # A booked host's wake-up joins the gang instead of claiming anything.
    booking = claim(url, "c")
    assert isinstance(booking, gangs.Booking)
    assert (booking.job_id, booking.attempt, booking.node_rank, booking.nodes) == (big, 1, 1, 3)
    assert booking.leader == "b" and booking.rendezvous == RENDEZVOUS
    with session_scope(url) as session:
        assert gangs.mark_joined(session, "c", big, 1)
        assert workers.state(session.get(Worker, "c"), BEAT) == "busy"
        assert workers.state(session.get(Worker, "d"), BEAT) == "booked"
        shown = gangs.gang_members(session, [big])[big]
    assert [(m["worker"], m["state"]) for m in shown] == [
        ("b", "leader"),
        ("c", "joined"),
        ("d", "booked"),
    ]

    # The attempt ends: the whole gang is free again.
    with session_scope(url) as session:
        gangs.release(session, big, 1)
    assert bookings(url) == {}


def test_busy_draining_and_lost_hosts_are_not_booked(url):
    register(url, "lead", "busy", "drained", "lost", "free")
    with session_scope(url) as session:
        workers.set_current_job(session, "busy", "ftjob-elsewhere")
        workers.set_draining(session, "drained", True)
        session.execute(
            update(Worker)
            .where(Worker.name == "lost")
            .values(last_heartbeat_at=utcnow() - timedelta(seconds=BEAT * 10))
        )
        org = make_org(session, "o")
        big = make_job(session, org, options={"nodes": 3})
    assert claim(url, "lead") is None  # only "free" could join: not enough
    assert bookings(url) == {} and status(url, big) == JobStatus.QUEUED
    register(url, "free2")
    got = claim(url, "lead")
    assert got.gang["hosts"] == ["lead", "free", "free2"]


def test_a_worker_that_leads_no_gang_passes_multi_node_jobs(url):
    register(url, "a", "b")
    with session_scope(url) as session:
        org = make_org(session, "o")
        make_job(session, org, options={"nodes": 2})
        got = scheduling.claim_next(session, pool="default", worker="a", lease_seconds=60)
    assert got is None
    assert bookings(url) == {}


def test_stale_bookings_are_released_by_the_sweep(url):
    big = two_node_job_led_by_a(url)
    assert bookings(url) == {"b": (big, 1, 1)}
    with session_scope(url) as session:
        assert gangs.release_stale(session) == 0  # the attempt still runs
        # The leader is lost; its job is re-queued (here: failed) without it releasing.
        jobs.fail_job(session, big, 1, code=FailureCode.INTERNAL_ERROR, message="lost")
    with session_scope(url) as session:
        assert gangs.release_stale(session) == 1
    assert bookings(url) == {}


def test_a_restarted_host_leaves_its_gang(url):
    big = two_node_job_led_by_a(url)
    deadline = utcnow() + timedelta(seconds=60)
    with session_scope(url) as session:
        problem = gangs.follower_problem(
            session, big, 1, heartbeat_seconds=BEAT, join_deadline=deadline
        )
        assert problem is None
        assert gangs.attempt_problem(session, big, 1, heartbeat_seconds=BEAT) is None
    register(url, "b")  # b restarted: its booking is gone
    with session_scope(url) as session:
        problem = gangs.follower_problem(
            session, big, 1, heartbeat_seconds=BEAT, join_deadline=deadline
        )
    assert problem == "host b left the job's gang (restarted or released)"


def test_a_follower_shutting_down_has_the_leader_requeue_the_job(url):
    big = two_node_job_led_by_a(url)
    with session_scope(url) as session:
        assert gangs.mark_joined(session, "b", big, 1)
        assert jobs.job_control(session, big, 1) == "run"
        assert gangs.leave(session, "b", big, 1)
        assert gangs.leave(session, "b", big, 1)  # asked twice: listed once
        assert not gangs.leave(session, "b", big, 2)  # not the running attempt
    with session_scope(url) as session:
        assert session.get(Job, big).gang["leaving"] == ["b"]
        assert jobs.job_control(session, big, 1) == "requeue"
        # Still in the gang, training until the leader has checkpointed: not a lost host.
        problem = gangs.follower_problem(
            session, big, 1, heartbeat_seconds=BEAT, join_deadline=utcnow()
        )
        assert problem is None
        assert jobs.requeue_for_shutdown(session, big, 1, 6, for_gang=True)
        gangs.release(session, big, 1)
    with session_scope(url) as session:
        job = session.get(Job, big)
        assert (job.status, job.attempt) == (JobStatus.QUEUED, 1)
        listed, _ = jobs.list_events(session, job, limit=10, after=None)
    assert (
        "Host b of the job's gang is shutting down; the job was re-queued after a checkpoint "
        "at step 6" in [e.message for e in listed]
    )
    # b keeps its booking until it stops, so the re-queued job cannot book it meanwhile.
    with session_scope(url) as session:
        assert gangs.release_stale(session) == 0
    assert bookings(url) == {"b": (big, 1, 1)}
    assert claim(url, "a") is None
    with session_scope(url) as session:
        workers.mark_stopped(session, "b")
    with session_scope(url) as session:
        assert gangs.release_stale(session) == 1
    register(url, "b")  # b comes back: a host like any other
    assert claim(url, "a").gang["hosts"] == ["a", "b"]
