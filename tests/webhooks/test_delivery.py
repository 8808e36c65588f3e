"""Delivery from the outbox to a real receiver on loopback, verified by the official openai
SDK: every event once per attempt, the same webhook-id on retries, bounded attempts, no
redirects, short response excerpts, and a hanging receiver does not hold up the others."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import replace

import pytest
from openai import OpenAI
from sqlalchemy import func, select

from core.db.engine import session_scope
from core.db.models import WebhookDelivery, WebhookEndpoint
from core.jobs import checkpoints
from core.jobs import lifecycle as jobs
from core.webhooks import endpoints, events
from core.webhooks.delivery import DeliveryLoop, backoff_seconds
from core.webhooks.signing import SecretBox
from tests.webhooks.conftest import FAST, add_endpoint, new_org, running_job
from tests.webhooks.receiver import Answer

SDK = OpenAI(api_key="unused", base_url="http://127.0.0.1:9/v1")


@pytest.fixture
def run_loop(db_url: str, box: SecretBox) -> Iterator:
    """Start a delivery loop (in this process) with a config; stopped after the test."""
    running: list[tuple[threading.Event, threading.Thread, DeliveryLoop]] = []

    def start(config=FAST) -> DeliveryLoop:
        loop = DeliveryLoop(db_url, box, config)
        stop = threading.Event()
        thread = threading.Thread(target=loop.run_forever, args=(stop,), daemon=True)
        thread.start()
        running.append((stop, thread, loop))
        return loop

    yield start
    for stop, thread, loop in running:
        stop.set()
        thread.join(timeout=10)
        loop.close()


def unwrap(received, secret: str):
    """What a receiver written with the official SDK does; raises on a bad signature."""
    return SDK.webhooks.unwrap(received.body, received.headers, secret=secret)


def deliveries(url: str, endpoint_id: str) -> list[WebhookDelivery]:
    with session_scope(url) as session:
        rows = session.scalars(
            select(WebhookDelivery).where(WebhookDelivery.endpoint_id == endpoint_id)
        ).all()
        session.expunge_all()
        return list(rows)


def test_each_event_arrives_signed_as_the_sdk_verifies(db_url, box, receiver, run_loop):
    org = new_org(db_url)
    endpoint_id, secret = add_endpoint(db_url, box, org, receiver.url(), list(events.EVENT_TYPES))
    succeeded, a1 = running_job(db_url, org)
    failed, a2 = running_job(db_url, org)
    paused, a3 = running_job(db_url, org)
    cancelled, _ = running_job(db_url, org)
    with session_scope(db_url) as session:
        checkpoints.record_checkpoint(
            session,
            succeeded,
            a1,
            step=1,
            epoch=1,
            reason="epoch",
            metrics={},
            storage_prefix="p",
            adapter_key="k",
        )
        jobs.succeed_job(session, succeeded, a1, trained_tokens=1, adapter_key="k", result_files=[])
        jobs.fail_job(session, failed, a2, code="boom", message="it broke")
        jobs.mark_paused(session, paused, a3, step=3)
        jobs.cancel_job(session, org, cancelled)
    run_loop()
    got = receiver.wait_for(5)
    time.sleep(0.5)  # nothing more arrives: once per event
    assert len(receiver.requests()) == 5
    seen = {}
    for request in got:
        event = unwrap(request, secret)
        assert event.object == "event" and event.id.startswith("evt_")
        seen[event.type] = event.data.id
        assert abs(event.created_at - time.time()) < 60
        assert request.headers["content-type"] == "application/json"
    assert seen == {
        "fine_tuning.job.checkpoint": succeeded,
        "fine_tuning.job.succeeded": succeeded,
        "fine_tuning.job.failed": failed,
        "fine_tuning.job.paused": paused,
        "fine_tuning.job.cancelled": cancelled,
    }
    # A tampered body or another secret does not verify.
    tampered = replace(got[0], body=got[0].body.replace(b"event", b"evil!"))
    with pytest.raises(Exception, match="signature"):
        unwrap(tampered, secret)
    with pytest.raises(Exception, match="signature"):
        unwrap(got[0], "whsec_" + "A" * 32)
    log = deliveries(db_url, endpoint_id)
    assert {d.status for d in log} == {"succeeded"} and {d.attempts for d in log} == {1}
    assert all(d.last_status_code == 200 and d.last_latency_ms is not None for d in log)


def test_only_subscribed_events_of_the_own_organization_are_sent(db_url, box, receiver, run_loop):
    org, other = new_org(db_url), new_org(db_url, "other")
    add_endpoint(db_url, box, org, receiver.url("/mine"), [events.SUCCEEDED])
    add_endpoint(db_url, box, other, receiver.url("/theirs"), list(events.EVENT_TYPES))
    job, attempt = running_job(db_url, org)
    cancelled, _ = running_job(db_url, org)
    with session_scope(db_url) as session:
        jobs.cancel_job(session, org, cancelled)  # not subscribed
        jobs.succeed_job(session, job, attempt, trained_tokens=1, adapter_key="k", result_files=[])
    run_loop()
    receiver.wait_for(1, "/mine")
    time.sleep(0.5)
    assert [json.loads(r.body)["type"] for r in receiver.requests()] == [events.SUCCEEDED]


def test_a_failing_receiver_gets_the_same_webhook_id_until_it_succeeds(
    db_url, box, receiver, run_loop
):
    org = new_org(db_url)
    endpoint_id, secret = add_endpoint(db_url, box, org, receiver.url(), [events.FAILED])
    receiver.on("/hook", Answer(500), Answer(503), Answer(500), Answer(200))
    job, attempt = running_job(db_url, org)
    with session_scope(db_url) as session:
        jobs.fail_job(session, job, attempt, code="boom", message="it broke")
    run_loop()
    got = receiver.wait_for(4)
    time.sleep(0.8)
    assert len(receiver.requests()) == 4
    assert len({r.headers["webhook-id"] for r in got}) == 1
    assert len({json.loads(r.body)["id"] for r in got}) == 1  # the same event
    for r in got:
        assert unwrap(r, secret).data.id == job
    gaps = [b.at - a.at for a, b in zip(got, got[1:], strict=False)]
    assert all(g >= 0.1 for g in gaps), gaps  # backed off between attempts
    (log,) = deliveries(db_url, endpoint_id)
    assert (log.status, log.attempts, log.last_status_code) == ("succeeded", 4, 200)
    assert log.id == got[0].headers["webhook-id"]


def test_attempts_are_bounded_then_failed_and_resend_delivers(db_url, box, receiver, run_loop):
    org = new_org(db_url)
    endpoint_id, secret = add_endpoint(db_url, box, org, receiver.url(), [events.CANCELLED])
    receiver.on("/hook", Answer(500, body=b"x" * 10_000))
    job, _ = running_job(db_url, org)
    with session_scope(db_url) as session:
        jobs.cancel_job(session, org, job)
    run_loop(replace(FAST, max_attempts=3))
    receiver.wait_for(3)
    deadline = time.monotonic() + 10
    while deliveries(db_url, endpoint_id)[0].status != "failed":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(0.6)
    assert len(receiver.requests()) == 3  # no fourth attempt
    (log,) = deliveries(db_url, endpoint_id)
    assert (log.attempts, log.last_status_code, log.next_attempt_at) == (3, 500, None)
    assert len(log.response_excerpt) <= 512  # never the whole body
    receiver.on("/hook", Answer(200))
    with session_scope(db_url) as session:
        endpoints.resend_delivery(session, org, log.id)
    got = receiver.wait_for(4)
    assert got[-1].headers["webhook-id"] == log.id
    unwrap(got[-1], secret)
    deadline = time.monotonic() + 10
    while deliveries(db_url, endpoint_id)[0].status != "succeeded":
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_redirects_are_not_followed(db_url, box, receiver, run_loop):
    org = new_org(db_url)
    endpoint_id, _ = add_endpoint(db_url, box, org, receiver.url(), [events.CANCELLED])
    receiver.on("/hook", Answer(302, headers=(("Location", receiver.url("/elsewhere")),)))
    job, _ = running_job(db_url, org)
    with session_scope(db_url) as session:
        jobs.cancel_job(session, org, job)
    run_loop(replace(FAST, max_attempts=1))
    receiver.wait_for(1)
    time.sleep(0.5)
    assert [r.path for r in receiver.requests()] == ["/hook"]
    (log,) = deliveries(db_url, endpoint_id)
    assert (log.status, log.last_status_code) == ("failed", 302)


def test_a_hanging_receiver_does_not_stall_other_deliveries(db_url, box, receiver, run_loop):
    org = new_org(db_url)
    add_endpoint(db_url, box, org, receiver.url("/slow"), [events.CANCELLED])
    add_endpoint(db_url, box, org, receiver.url("/fast"), [events.CANCELLED])
    receiver.on("/slow", Answer(200, delay=30))
    for _ in range(3):
        job, _ = running_job(db_url, org)
        with session_scope(db_url) as session:
            jobs.cancel_job(session, org, job)
    started = time.monotonic()
    run_loop(replace(FAST, timeout_seconds=1.0, max_attempts=1))
    receiver.wait_for(3, "/fast", timeout=5)
    assert time.monotonic() - started < 3  # not queued behind the hanging ones
    receiver.wait_for(3, "/slow", timeout=5)


def test_the_outbox_row_exists_exactly_when_the_status_change_commits(db_url, box, receiver):
    org = new_org(db_url)
    add_endpoint(db_url, box, org, receiver.url(), [events.CANCELLED])
    job, _ = running_job(db_url, org)
    count = select(func.count()).select_from(WebhookDelivery)
    with session_scope(db_url) as session:
        jobs.cancel_job(session, org, job)
        session.rollback()  # the change did not happen: neither did the event
        assert session.scalar(count) == 0
    with session_scope(db_url) as session:
        jobs.cancel_job(session, org, job)
    # Committed with the change, before any delivery process has run.
    with session_scope(db_url) as session:
        assert session.scalar(count) == 1
        assert session.scalar(select(WebhookDelivery.status)) == "pending"


def test_a_disabled_endpoint_gets_nothing(db_url, box, receiver, run_loop):
    org = new_org(db_url)
    endpoint_id, _ = add_endpoint(db_url, box, org, receiver.url(), [events.CANCELLED])
    with session_scope(db_url) as session:
        endpoints.update_endpoint(session, org, endpoint_id, {"enabled": False}, allow_private=True)
    job, _ = running_job(db_url, org)
    with session_scope(db_url) as session:
        jobs.cancel_job(session, org, job)
        assert not session.get(WebhookEndpoint, endpoint_id).enabled
    run_loop()
    time.sleep(0.5)
    assert receiver.requests() == []


def test_backoff_grows_exponentially_with_jitter_and_a_cap():
    config = replace(FAST, retry_base_seconds=30, retry_max_seconds=4 * 3600)
    assert backoff_seconds(1, config, rng=lambda: 1.0) == 30
    assert backoff_seconds(4, config, rng=lambda: 1.0) == 240
    assert backoff_seconds(4, config, rng=lambda: 0.0) == 120  # jitter: down to half
    assert backoff_seconds(20, config, rng=lambda: 1.0) == 4 * 3600
    total = sum(backoff_seconds(n, config, rng=lambda: 0.5) for n in range(1, 12))
    assert 3 * 3600 < total < 24 * 3600  # retries spread over hours


def test_a_commit_wakes_the_loop_without_waiting_for_its_poll(db_url, box, receiver, run_loop):
    org = new_org(db_url)
    add_endpoint(db_url, box, org, receiver.url(), [events.CANCELLED])
    job, _ = running_job(db_url, org)
    run_loop(replace(FAST, poll_seconds=10))
    time.sleep(0.5)  # the loop found nothing and waits
    with session_scope(db_url) as session:
        jobs.cancel_job(session, org, job)
    committed = time.time()
    (got,) = receiver.wait_for(1, timeout=5)
    assert got.at - committed < 2  # LISTEN/NOTIFY, not the 10 s poll


def test_delivery_works_on_sqlite(tmp_path, box, receiver):
    from core.catalog import lookup as catalog
    from core.db.migrate import upgrade

    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    upgrade(url)
    with session_scope(url) as session:
        catalog.register_builtin_models(session)
    org = new_org(url)
    _, secret = add_endpoint(url, box, org, receiver.url(), [events.CANCELLED])
    job, _ = running_job(url, org)
    with session_scope(url) as session:
        jobs.cancel_job(session, org, job)
    loop = DeliveryLoop(url, box, FAST)
    assert loop.run_once() == 1
    (got,) = receiver.wait_for(1)
    loop.close()
    assert unwrap(got, secret).data.id == job


def test_an_address_refusing_the_connection_is_skipped_for_the_next(
    db_url, box, receiver, resolver
):
    resolver["two.test"] = ["127.0.0.2", "127.0.0.1"]  # nothing listens on the first
    org = new_org(db_url)
    port = receiver.server.server_address[1]
    _, secret = add_endpoint(db_url, box, org, f"http://two.test:{port}/hook", [events.FAILED])
    job, attempt = running_job(db_url, org)
    with session_scope(db_url) as session:
        jobs.fail_job(session, job, attempt, code="boom", message="it broke")
    loop = DeliveryLoop(db_url, box, FAST)
    loop.run_once()
    (got,) = receiver.wait_for(1)
    loop.close()  # the outcome is written before the test's database goes
    assert got.headers["host"] == f"two.test:{port}"  # the name, not the address
    assert unwrap(got, secret).data.id == job
