"""The delivery loop runs in ``dorado scheduler``, a real process here: SIGKILL it while a
retry is in flight and while events are committed; a restarted one loses nothing and sends
the same webhook-id again (at least once)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from openai import OpenAI
from sqlalchemy import select

from core.db.engine import session_scope
from core.db.models import WebhookDelivery
from core.jobs import lifecycle as jobs
from core.webhooks import events
from tests.conftest import ROOT
from tests.webhooks.conftest import PLATFORM_SECRET, add_endpoint, new_org, running_job
from tests.webhooks.receiver import Answer

SDK = OpenAI(api_key="unused", base_url="http://127.0.0.1:9/v1")


@pytest.fixture
def scheduler(db_url: str, tmp_path: Path) -> Iterator:
    procs: list[subprocess.Popen] = []
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "DORADO_HOME": str(tmp_path / "home"),
        "DORADO_DATABASE_URL": db_url,
        "DORADO_SECRET_KEY": PLATFORM_SECRET,
        "DORADO_WEBHOOKS_ALLOW_PRIVATE": "1",
        "DORADO_WEBHOOKS_TIMEOUT_SECONDS": "1",  # a claimed delivery's lease: 8 s
        "DORADO_WEBHOOKS_RETRY_BASE_SECONDS": "0.3",
        "DORADO_WEBHOOKS_RETRY_MAX_SECONDS": "1",
        "DORADO_WEBHOOKS_POLL_SECONDS": "0.1",
    }
    env.pop("DORADO_BROKER_URL", None)

    def start() -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, "-m", "cli.main", "scheduler"], env=env, cwd=ROOT)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def test_killing_the_delivery_worker_mid_retry_loses_nothing(db_url, box, receiver, scheduler):
    org = new_org(db_url)
    endpoint_id, secret = add_endpoint(db_url, box, org, receiver.url(), [events.CANCELLED])
    # First attempt fails; the retry hangs (and is in flight when the process dies).
    receiver.on("/hook", Answer(500), Answer(200, delay=60), Answer(200))
    first, _ = running_job(db_url, org)
    second, _ = running_job(db_url, org)
    with session_scope(db_url) as session:
        jobs.cancel_job(session, org, first)
    proc = scheduler()
    receiver.wait_for(2, timeout=30)  # the failure, then the hanging retry
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    # An event committed while no delivery process runs waits in the outbox.
    with session_scope(db_url) as session:
        jobs.cancel_job(session, org, second)
    killed_at = time.time()
    scheduler()
    got = receiver.wait_for(4, timeout=30)
    time.sleep(1)
    assert len(receiver.requests()) == 4  # each attempt once: nothing lost, nothing extra
    by_job: dict[str, list] = {}
    for request in got:
        event = SDK.webhooks.unwrap(request.body, request.headers, secret=secret)
        by_job.setdefault(event.data.id, []).append(request)
    assert sorted(by_job) == sorted([first, second])
    retried = by_job[first]
    assert len(retried) == 3 and len({r.headers["webhook-id"] for r in retried}) == 1
    assert retried[-1].at >= killed_at  # re-sent by the new process once the lease ran out
    assert json.loads(retried[0].body) == json.loads(retried[-1].body)
    with session_scope(db_url) as session:
        rows = session.execute(
            select(WebhookDelivery.status, WebhookDelivery.attempts).where(
                WebhookDelivery.endpoint_id == endpoint_id
            )
        ).all()
    assert sorted(rows) == [("succeeded", 1), ("succeeded", 3)]
