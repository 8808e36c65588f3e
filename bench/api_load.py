"""API load benchmark: create / list / poll at a fixed request rate against gunicorn on
loopback, with 100,000 jobs in PostgreSQL; then peak API memory while a 1 GB file uploads.

Run by hand (needs PostgreSQL on 127.0.0.1:5432 and Redis on 127.0.0.1:6379)::

    .venv/bin/python bench/api_load.py                      # 200 req/s for 60 s, 100k jobs
    .venv/bin/python bench/api_load.py --rate 100 --seconds 20 --jobs 20000 --upload-mb 200

The load is open-loop: requests are scheduled at fixed instants and latency is measured from
the scheduled instant, so a slow server cannot hide its queueing (no coordinated omission).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import timedelta
from pathlib import Path

import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cli.main import api_command  # noqa: E402
from core.bootstrap import prepare_database  # noqa: E402
from core.db.engine import session_scope  # noqa: E402
from core.db.models import File, Job  # noqa: E402
from core.settings import load_settings  # noqa: E402
from core.tenancy import auth  # noqa: E402
from core.timeutil import utcnow  # noqa: E402

PG_ADMIN = "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"
KEY = "dor-bench-key-0000000000000000"
MIX = (("poll", 0.6), ("list", 0.3), ("create", 0.1))


def make_database() -> str:
    name = f"dorado_bench_{uuid.uuid4().hex[:8]}"
    engine = sa.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    engine.dispose()
    return name


def drop_database(name: str) -> None:
    engine = sa.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    engine.dispose()


def seed(database_url: str, n_jobs: int) -> tuple[str, list[str]]:
    """n_jobs jobs (mostly finished, a few hundred queued) and one training file."""
    with session_scope(database_url) as session:
        org_id = auth.find_key(session, KEY).organization_id
        file_id = "file-bench000000000000000000"
        session.add(
            File(
                id=file_id,
                organization_id=org_id,
                filename="bench.jsonl",
                purpose="fine-tune",
                bytes=1000,
                status="processed",
                storage_key=f"files/{file_id}",
                example_count=50,
                stats={},
                created_at=utcnow(),
            )
        )
    start = utcnow() - timedelta(days=30)
    ids = []
    rows = []
    for i in range(n_jobs):
        job_id = f"ftjob-bench{i:019d}"
        ids.append(job_id)
        status = (
            "queued"
            if i >= n_jobs - 300
            else random.choice(["succeeded"] * 8 + ["failed", "cancelled"])
        )
        hyper = {"n_epochs": 3, "batch_size": 4, "learning_rate_multiplier": 1.0}
        rows.append(
            {
                "id": job_id,
                "organization_id": org_id,
                "model": "tiny-random-llama",
                "status": status,
                "training_file": file_id,
                "hyperparameters": hyper,
                "adapter": {
                    "type": "dora",
                    "r": 16,
                    "alpha": 32,
                    "dropout": 0.0,
                    "target_modules": "all-linear",
                },
                "method": {"type": "supervised", "supervised": {"hyperparameters": hyper}},
                "seed": i,
                "result_files": [],
                "created_at": start + timedelta(seconds=i * 20),
                "attempt": 1,
                "pause_requested": False,
                "options": {},
            }
        )
    engine = sa.create_engine(database_url)
    with engine.begin() as conn:
        for chunk in range(0, len(rows), 5000):
            conn.execute(sa.insert(Job), rows[chunk : chunk + 5000])
    # A live database has planner statistics (autovacuum); a bulk-loaded one has none yet.
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text("ANALYZE"))
    engine.dispose()
    return file_id, ids


class Load:
    """Open-loop load at a fixed rate from a pool of keep-alive connections."""

    def __init__(
        self,
        port: int,
        rate: float,
        seconds: float,
        file_id: str,
        job_ids: list[str],
        threads: int = 32,
    ):
        self.port, self.rate, self.seconds = port, rate, seconds
        self.file_id, self.job_ids = file_id, job_ids
        self.threads = threads
        self.results: list[tuple[str, float, int]] = []
        self.lock = threading.Lock()
        self.next_index = 0
        self.started = 0.0

    def _request(self, conn: http.client.HTTPConnection, kind: str) -> int:
        headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
        if kind == "poll":
            conn.request(
                "GET", f"/v1/fine_tuning/jobs/{random.choice(self.job_ids)}", headers=headers
            )
        elif kind == "list":
            after = f"&after={random.choice(self.job_ids)}" if random.random() < 0.5 else ""
            conn.request("GET", f"/v1/fine_tuning/jobs?limit=20{after}", headers=headers)
        else:
            body = json.dumps({"model": "tiny-random-llama", "training_file": self.file_id})
            conn.request("POST", "/v1/fine_tuning/jobs", body=body, headers=headers)
        resp = conn.getresponse()
        resp.read()
        return resp.status

    def _worker(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        total = int(self.rate * self.seconds)
        while True:
            with self.lock:
                index = self.next_index
                self.next_index += 1
            if index >= total:
                break
            due = self.started + index / self.rate
            delay = due - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            kind = random.choices([k for k, _ in MIX], [w for _, w in MIX])[0]
            try:
                status = self._request(conn, kind)
            except (OSError, http.client.HTTPException):
                status = 0
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            latency = time.perf_counter() - due
            with self.lock:
                self.results.append((kind, latency, status))

    def run(self) -> dict:
        self.started = time.perf_counter() + 0.5
        workers = [threading.Thread(target=self._worker) for _ in range(self.threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        return summarise(self.results, time.perf_counter() - self.started)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def summarise(results: list[tuple[str, float, int]], elapsed: float) -> dict:
    report = {"requests": len(results), "achieved_rate": round(len(results) / elapsed, 1)}
    for kind in ["all"] + [k for k, _ in MIX]:
        subset = [r for r in results if kind == "all" or r[0] == kind]
        latencies = [r[1] * 1000 for r in subset]
        errors = sum(1 for r in subset if not 200 <= r[2] < 300)
        report[kind] = {
            "n": len(subset),
            "errors": errors,
            "p50_ms": round(percentile(latencies, 0.50), 1),
            "p99_ms": round(percentile(latencies, 0.99), 1),
            "mean_ms": round(statistics.fmean(latencies), 1) if latencies else None,
        }
    return report


def rss_kb(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total


def children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def upload_memory(port: int, api_pid: int, size_mb: int) -> dict:
    """Peak RSS growth of the API processes while a ``size_mb`` JSONL file uploads."""
    line = (
        json.dumps(
            {
                "messages": [
                    {"role": "user", "content": "x" * 200},
                    {"role": "assistant", "content": "y" * 200},
                ]
            }
        )
        + "\n"
    )
    with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False) as handle:
        repeats = size_mb * 1024 * 1024 // len(line)
        block = line * 1000
        for _ in range(repeats // 1000):
            handle.write(block)
        path = handle.name
    size = os.path.getsize(path)
    pids = [api_pid, *children(api_pid)]
    baseline = rss_kb(pids)
    peak = baseline
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, rss_kb(pids))
            time.sleep(0.1)

    sampler = threading.Thread(target=sample)
    sampler.start()
    started = time.perf_counter()
    result = subprocess.run(
        [
            "curl",
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-H",
            f"Authorization: Bearer {KEY}",
            "-F",
            "purpose=fine-tune",
            "-F",
            f"file=@{path}",
            f"http://127.0.0.1:{port}/v1/files",
        ],
        capture_output=True,
        text=True,
    )
    elapsed = time.perf_counter() - started
    done.set()
    sampler.join()
    os.unlink(path)
    return {
        "file_mb": round(size / 2**20),
        "status": result.stdout,
        "seconds": round(elapsed, 1),
        "baseline_rss_mb": round(baseline / 1024, 1),
        "peak_rss_growth_mb": round((peak - baseline) / 1024, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rate", type=float, default=200)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--upload-mb", type=int, default=1024)
    parser.add_argument("--api-workers", type=int, default=2)
    args = parser.parse_args()

    database = make_database()
    home = Path(tempfile.mkdtemp(prefix="dorado-bench-"))
    env = {
        **os.environ,
        "DORADO_HOME": str(home),
        "DORADO_BOOTSTRAP_API_KEY": KEY,
        "DORADO_DATABASE_URL": f"postgresql+psycopg2://postgres@127.0.0.1:5432/{database}",
        "DORADO_BROKER_URL": "redis://127.0.0.1:6379/14",
        "DORADO_MAX_UPLOAD_BYTES": str(4 * 2**30),
        # One key drives the whole load: a limit it never reaches keeps the limiter's
        # per-request cost (a Redis round trip) in the measurement without refusing anything.
        "DORADO_RATE_LIMIT_PER_MINUTE": str(10**9),
    }
    os.environ.update(env)
    settings = load_settings()
    api = None
    try:
        prepare_database(settings)
        t0 = time.perf_counter()
        file_id, job_ids = seed(settings.database_url, args.jobs)
        print(f"seeded {args.jobs} jobs in {time.perf_counter() - t0:.1f} s", flush=True)
        port = 18000 + random.randint(0, 999)
        command = api_command("127.0.0.1", port, workers=args.api_workers)
        command[command.index("--access-logfile") + 1] = "/dev/null"
        api = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        for _ in range(100):
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
                conn.request("GET", "/healthz")
                if conn.getresponse().status == 200:
                    break
            except OSError:
                time.sleep(0.2)
        Load(port, args.rate / 4, 5, file_id, job_ids).run()  # warm-up
        report = Load(port, args.rate, args.seconds, file_id, job_ids).run()
        report["target_rate"] = args.rate
        report["jobs_in_db"] = args.jobs
        print(json.dumps(report, indent=2), flush=True)
        if args.upload_mb:
            print(json.dumps(upload_memory(port, api.pid, args.upload_mb), indent=2))
    finally:
        if api is not None:
            api.terminate()
            api.wait()
        from core.db.engine import get_engine

        get_engine(settings.database_url).dispose()
        drop_database(database)


if __name__ == "__main__":
    main()
