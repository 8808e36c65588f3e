"""Webhook burst: 1,000 job endings committed as fast as one client can, delivered by a real
``dorado scheduler`` process to a receiver on loopback. Reports how many arrived, each
signature checked with the official openai SDK, and the delay from each job's commit to the
receipt of its event (p50/p90/p99/max).

    PYTHONPATH=. .venv/bin/python bench/webhook_burst.py [--jobs 1000]

Needs PostgreSQL on 127.0.0.1:5432 (trust auth); creates and drops a database of its own.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import sqlalchemy as sa
from openai import OpenAI
from sqlalchemy import update

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core.catalog import lookup as catalog  # noqa: E402
from core.db.engine import get_engine, session_scope  # noqa: E402
from core.db.migrate import upgrade  # noqa: E402
from core.db.models import File, Job, WebhookDelivery  # noqa: E402
from core.jobs import lifecycle as jobs  # noqa: E402
from core.jobs.hyperparams import AdapterConfig, Hyperparameters  # noqa: E402
from core.tenancy import auth  # noqa: E402
from core.timeutil import utcnow  # noqa: E402
from core.webhooks import endpoints, events  # noqa: E402
from core.webhooks.signing import SecretBox  # noqa: E402

PG_ADMIN = "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"
PLATFORM_SECRET = "bench-platform-secret"


class _Server(ThreadingHTTPServer):
    request_queue_size = 128  # a burst of deliveries must not overflow the listen backlog


class Receiver:
    """Records (arrival time, headers, body) of every POST; answers 200."""

    def __init__(self) -> None:
        self.got: list[tuple[float, dict[str, str], bytes]] = []
        lock = threading.Lock()
        got = self.got

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                at = time.time()
                with lock:
                    got.append((at, {k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = _Server(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"


def running_jobs(url: str, org_id: str, n: int) -> list[tuple[str, int]]:
    out = []
    with session_scope(url) as session:
        for _ in range(n):
            job = jobs.create_job(
                session,
                org_id,
                jobs.NewJob(
                    model="tiny-random-llama",
                    training_file="file-bench",
                    validation_file=None,
                    hyperparameters=Hyperparameters(),
                    adapter=AdapterConfig(),
                    seed=1,
                    suffix=None,
                    metadata=None,
                ),
            )
            out.append(job.id)
        session.execute(update(Job).where(Job.id.in_(out)).values(status="queued"))
    with session_scope(url) as session:
        return [(job_id, jobs.claim_job(session, job_id, "bench", 3600)) for job_id in out]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=8, help="threads committing endings")
    parser.add_argument("--timeout", type=float, default=300, help="seconds to wait for all")
    args = parser.parse_args()

    name = f"dorado_bench_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = PG_ADMIN.rsplit("/", 1)[0] + f"/{name}"
    receiver = Receiver()
    scheduler = None
    try:
        upgrade(url)
        with session_scope(url) as session:
            catalog.register_builtin_models(session)
            org_id = auth.create_organization(session, "bench").id
            session.add(
                File(
                    id="file-bench",
                    organization_id=org_id,
                    filename="t.jsonl",
                    purpose="fine-tune",
                    bytes=1,
                    status="processed",
                    storage_key="k",
                    example_count=20,
                    created_at=utcnow(),
                )
            )
        with session_scope(url) as session:
            new = endpoints.create_endpoint(
                session,
                SecretBox(PLATFORM_SECRET),
                org_id,
                url=receiver.url,
                event_types=list(events.EVENT_TYPES),
                allow_private=True,
            )
            secret = new.secret
        print(f"creating {args.jobs} running jobs...", flush=True)
        claimed = running_jobs(url, org_id, args.jobs)

        home = tempfile.mkdtemp(prefix="dorado-bench-")
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "DORADO_HOME": home,
            "DORADO_DATABASE_URL": url,
            "DORADO_SECRET_KEY": PLATFORM_SECRET,
            "DORADO_WEBHOOKS_ALLOW_PRIVATE": "1",  # the receiver is on loopback
        }
        env.pop("DORADO_BROKER_URL", None)
        scheduler = subprocess.Popen(
            [sys.executable, "-m", "cli.main", "scheduler"], env=env, cwd=ROOT,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        time.sleep(3)  # started and idle: what follows measures delivery, not start-up

        committed: dict[str, float] = {}

        def end(i: int) -> None:
            job_id, attempt = claimed[i]
            with session_scope(url) as session:
                if i % 3 == 0:
                    jobs.succeed_job(
                        session, job_id, attempt, trained_tokens=1, adapter_key="k",
                        result_files=[],
                    )  # fmt: skip
                elif i % 3 == 1:
                    jobs.fail_job(session, job_id, attempt, code="bench", message="burst")
                else:
                    jobs.cancel_job(session, org_id, job_id)
            committed[job_id] = time.time()

        started = time.time()
        # Several clients ending jobs at once (the engine pool holds 5 + 10 connections).
        with ThreadPoolExecutor(args.clients) as pool:
            list(pool.map(end, range(len(claimed))))
        burst = time.time() - started
        print(f"committed {len(committed)} job endings in {burst:.2f} s", flush=True)

        deadline = time.time() + args.timeout
        while len(receiver.got) < len(committed) and time.time() < deadline:
            time.sleep(0.1)
        sdk = OpenAI(api_key="unused", base_url="http://127.0.0.1:9/v1")
        delays: dict[str, float] = {}
        for at, headers, body in list(receiver.got):
            sdk.webhooks.unwrap(body, headers, secret=secret)  # raises if forged
            job_id = json.loads(body)["data"]["id"]
            delays.setdefault(job_id, at - committed[job_id])
        ms = [d * 1000 for d in delays.values()]
        print(
            f"delivered {len(delays)}/{len(committed)} (requests: {len(receiver.got)}, "
            f"every signature verified by the openai SDK)"
        )
        if ms:
            print(
                f"commit -> receipt: p50 {percentile(ms, 0.5):.0f} ms, "
                f"p90 {percentile(ms, 0.9):.0f} ms, p99 {percentile(ms, 0.99):.0f} ms, "
                f"max {max(ms):.0f} ms, mean {statistics.fmean(ms):.0f} ms"
            )
            print(f"last receipt {max(a for a, _, _ in receiver.got) - started:.2f} s after "
                  "the first commit")  # fmt: skip
        with session_scope(url) as session:
            attempts = session.scalar(sa.select(sa.func.sum(WebhookDelivery.attempts)))
        print(f"attempts made: {attempts} for {len(committed)} deliveries")
        if len(delays) < len(committed):
            sys.exit(1)
    finally:
        if scheduler is not None:
            scheduler.terminate()
            scheduler.wait(timeout=30)
        receiver.server.shutdown()
        get_engine(url).dispose()
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


if __name__ == "__main__":
    main()
