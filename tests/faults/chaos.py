"""The chaos soak (issue 21): many small jobs from several organizations run on two training
workers over PostgreSQL, a private Redis and an S3 server while faults are injected on a
schedule (a worker SIGKILLed, Redis killed and restarted, the API restarted, S3 failing for a
while). :func:`run_soak` drives it and returns a :class:`SoakReport`; :meth:`SoakReport.problems`
lists every broken promise (a job not ``succeeded``, a metrics step missing or repeated, a
file or adapter that cannot be downloaded, ``/healthz`` down outside the API's own restarts).

Used by ``tests/faults/test_chaos_soak.py`` (a short run in CI) and ``bench/chaos_soak.py``
(a long run with knobs). Processes are driven directly, as ``tests/faults/cluster.py`` does.
"""

from __future__ import annotations

import io
import itertools
import json
import shutil
import signal
import statistics
import subprocess
import tarfile
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import requests

from tests.conftest import EXAMPLES
from tests.e2e.platform import free_port
from tests.faults.cluster import Cluster
from tests.faults.s3proxy import FlakyS3Proxy

MODEL = "tiny-random-llama"
WORKERS = ("worker-a", "worker-b")
FAULTS = ("kill_worker", "restart_redis", "s3_outage", "restart_api")
TERMINAL = ("succeeded", "failed", "cancelled")
#: A restart window is widened by this much on each side: the poller's first success after
#: a restart can come a poll (and, on a loaded machine, a slow answer) after the restart's own.
WINDOW_SLACK_S = 3.0


@dataclass(frozen=True)
class SoakConfig:
    """The scenario's knobs. The defaults are the short run of the test suite."""

    orgs: int = 3
    jobs_per_org: int = 7
    examples: int = 10  # the smallest valid training file
    batch_size: int = 2
    epochs: int = 1  # 5 steps a job
    checkpoint_every: int = 3
    #: The faults, injected in this order, one every ``fault_interval_s``.
    faults: tuple[str, ...] = (
        "kill_worker",
        "restart_redis",
        "kill_worker",
        "restart_api",
        "s3_outage",
    )
    fault_interval_s: float = 15.0
    #: Repeat ``faults`` until every job has ended (the long run) instead of once.
    cycle_faults: bool = False
    #: Keep submitting one job per organization while fewer than this many are unfinished,
    #: until ``duration_s`` has passed (0: only the first ``orgs * jobs_per_org`` jobs).
    duration_s: float = 0.0
    keep_unfinished: int = 4
    s3_outage_s: float = 8.0
    redis_down_s: float = 2.0
    worker_down_s: float = 2.0
    #: Faults are dense on purpose: a job may lose its worker or its storage several times.
    max_job_retries: int = 20
    timeout_s: float = 600.0


class PrivateRedis:
    """A redis-server of the soak's own on a free port (never the machine's shared one), so
    that it can be killed and restarted. No persistence: a restart loses every message."""

    def __init__(self, workdir: Path):
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.workdir = workdir
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 15) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed")
        log = open(self.workdir / "redis.log", "ab")
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
            + ["--appendonly", "no", "--dir", str(self.workdir)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        import redis

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if redis.Redis.from_url(self.url, socket_timeout=1).ping():
                    return
            except redis.RedisError:
                time.sleep(0.1)
        raise TimeoutError("the private redis-server did not start")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


class HealthPoller:
    """Polls ``/healthz`` in a thread and records every interval in which it did not answer
    200 (from the first failed request's start to the next success)."""

    def __init__(self, url: str, interval: float = 0.2, timeout: float = 5.0):
        self.url = url
        self.interval = interval
        self.timeout = timeout
        self.gaps: list[tuple[float, float]] = []
        self.polls = 0
        self._down_since: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="healthz-poller", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        if self._down_since is not None:
            self.gaps.append((self._down_since, time.monotonic()))
            self._down_since = None

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                ok = requests.get(self.url, timeout=self.timeout).status_code == 200
            except requests.RequestException:
                ok = False
            self.polls += 1
            if not ok and self._down_since is None:
                self._down_since = started
            elif ok and self._down_since is not None:
                self.gaps.append((self._down_since, time.monotonic()))
                self._down_since = None
            self._stop.wait(self.interval)


@dataclass
class JobResult:
    id: str
    org: str
    status: str
    error: dict | None
    seconds: float
    metric_steps: list[int]
    total_steps: int
    replayed_steps: int
    problems: list[str]


@dataclass
class SoakReport:
    """What happened, and every check that failed (``problems``; empty when all held)."""

    jobs: list[JobResult] = field(default_factory=list)
    faults: list[tuple[str, float]] = field(default_factory=list)
    healthz_gaps: list[tuple[float, float]] = field(default_factory=list)
    api_restarts: list[tuple[float, float]] = field(default_factory=list)
    healthz_polls: int = 0
    wall_s: float = 0.0
    problems: list[str] = field(default_factory=list)

    def figures(self) -> dict:
        """The figures a run reports (the bench prints them as JSON)."""
        seconds = sorted(j.seconds for j in self.jobs)
        gaps = [end - start for start, end in self.healthz_gaps]
        return {
            "jobs": len(self.jobs),
            "succeeded": sum(j.status == "succeeded" for j in self.jobs),
            "organizations": len({j.org for j in self.jobs}),
            "faults": dict(Counter(kind for kind, _ in self.faults)),
            "healthz_polls": self.healthz_polls,
            "healthz_gaps": len(gaps),
            "healthz_down_s": round(sum(gaps), 2),
            "healthz_longest_gap_s": round(max(gaps, default=0.0), 2),
            "healthz_gaps_outside_api_restarts": len(self.stray_gaps()),
            "job_seconds_p50": round(_percentile(seconds, 50), 1),
            "job_seconds_p99": round(_percentile(seconds, 99), 1),
            "steps_replayed_after_kills": sum(j.replayed_steps for j in self.jobs),
            "wall_s": round(self.wall_s, 1),
            "problems": len(self.problems),
        }

    def stray_gaps(self) -> list[tuple[float, float]]:
        """The ``/healthz`` gaps not inside one of the API's own restarts."""
        return [
            gap
            for gap in self.healthz_gaps
            if not any(
                start - WINDOW_SLACK_S <= gap[0] and gap[1] <= end + WINDOW_SLACK_S
                for start, end in self.api_restarts
            )
        ]


def _percentile(sorted_values: list[float], pct: float) -> float:
    if not sorted_values:
        return 0.0
    if len(sorted_values) == 1:
        return sorted_values[0]
    return statistics.quantiles(sorted_values, n=100, method="inclusive")[int(pct) - 1]


@dataclass(frozen=True)
class Tenant:
    """An organization of the soak: its id, its API key's headers and its training file."""

    org: str
    headers: dict[str, str]
    file_id: str
    file_body: bytes


class Soak:
    """One soak: the cluster, its private Redis and S3 proxy, the tenants and their jobs."""

    def __init__(
        self,
        workdir: Path,
        config: SoakConfig,
        database_url: str,
        s3_endpoint: str,
        bucket: str,
        model_cache: Path,
        log: Callable[[str], None] = print,
    ):
        self.config = config
        self.workdir = workdir
        self._print = log
        self.redis = PrivateRedis(workdir)
        self.proxy = FlakyS3Proxy(s3_endpoint)
        self.cluster = Cluster(
            workdir / "home",
            "dor-chaos-soak-key-000000000",
            model_cache,
            {
                "DORADO_DATABASE_URL": database_url,
                "DORADO_BROKER_URL": self.redis.url,
                "DORADO_STORAGE_URL": f"s3://{bucket}/chaos",
                "DORADO_S3_ENDPOINT_URL": self.proxy.url,
                "AWS_ACCESS_KEY_ID": "test",
                "AWS_SECRET_ACCESS_KEY": "test",
                "AWS_DEFAULT_REGION": "us-east-1",
                "DORADO_MAX_JOB_RETRIES": str(config.max_job_retries),
            },
        )
        self.base = f"http://127.0.0.1:{self.cluster.port}"
        self.poller = HealthPoller(f"{self.base}/healthz")
        self.report = SoakReport()
        self.tenants: list[Tenant] = []
        self.jobs: dict[str, Tenant] = {}  # job id -> its organization
        self._victims = itertools.cycle(WORKERS)
        self._t0 = time.monotonic()

    def log(self, line: str) -> None:
        """A progress line, printed and kept in ``soak.log`` next to the processes' logs."""
        stamped = f"[{time.monotonic() - self._t0:6.1f}s] {line}"
        self._print(stamped)
        with open(self.workdir / "soak.log", "a") as handle:
            handle.write(stamped + "\n")

    # --- set up -----------------------------------------------------------------------------
    def start(self) -> None:
        self.redis.start()
        self.cluster.migrate()
        self.cluster.start_api()
        self.poller.start()
        self.cluster.start_scheduler()
        self.cluster.start_validator()
        for name in WORKERS:
            self.cluster.start_worker(name)
        operator = {"Authorization": f"Bearer {self.cluster.api_key}"}
        lines = (EXAMPLES / "pirate.jsonl").read_bytes().splitlines(keepends=True)
        for n in range(self.config.orgs):
            org = self._call("POST", "/v1/admin/organizations", operator, json={"name": f"t{n}"})
            key = self._call(
                "POST", f"/v1/admin/organizations/{org['id']}/api_keys", operator, json={}
            )
            headers = {"Authorization": f"Bearer {key['key']}"}
            # Each organization its own slice of the examples, so files differ.
            body = b"".join(lines[(n + i) % len(lines)] for i in range(self.config.examples))
            uploaded = self._call(
                "POST",
                "/v1/files",
                headers,
                files={"file": (f"org{n}.jsonl", body)},
                data={"purpose": "fine-tune"},
            )
            self.tenants.append(Tenant(org["id"], headers, uploaded["id"], body))

    def submit_round(self) -> None:
        """One job per organization."""
        for tenant in self.tenants:
            job = self._call(
                "POST",
                "/v1/fine_tuning/jobs",
                tenant.headers,
                json={
                    "model": MODEL,
                    "training_file": tenant.file_id,
                    "hyperparameters": {
                        "n_epochs": self.config.epochs,
                        "batch_size": self.config.batch_size,
                    },
                    "adapter": {"type": "lora"},
                    "checkpoint_every_n_steps": self.config.checkpoint_every,
                },
            )
            self.jobs[job["id"]] = tenant

    def _call(self, method: str, path: str, headers: dict[str, str], **kw) -> dict:
        """A request that rides out the API's own restart (connection refused: try again)."""
        deadline = time.monotonic() + 60
        while True:
            try:
                resp = requests.request(method, self.base + path, headers=headers, timeout=30, **kw)
            except requests.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
                continue
            if resp.status_code in (502, 503) and time.monotonic() < deadline:
                time.sleep(float(resp.headers.get("Retry-After") or 1))
                continue
            resp.raise_for_status()
            return resp.json() if resp.content else {}

    # --- faults -----------------------------------------------------------------------------
    def inject(self, kind: str) -> None:
        at = time.monotonic()
        self.log(f"fault: {kind}")
        if kind == "kill_worker":
            victim = next(self._victims)
            self.cluster.signal(victim, signal.SIGKILL)
            self.cluster.wait(victim, timeout=30)
            time.sleep(self.config.worker_down_s)
            self.cluster.start_worker(victim)
        elif kind == "restart_redis":
            self.redis.kill()
            time.sleep(self.config.redis_down_s)
            self.redis.start()
        elif kind == "s3_outage":
            self.proxy.broken = True
            time.sleep(self.config.s3_outage_s)
            self.proxy.broken = False
        elif kind == "restart_api":
            self.cluster.signal("api", signal.SIGTERM)
            self.cluster.wait("api", timeout=60)
            self.cluster.start_api()
            self.report.api_restarts.append((at, time.monotonic()))
        else:
            raise ValueError(f"unknown fault {kind!r}; known: {', '.join(FAULTS)}")
        self.report.faults.append((kind, at))

    # --- the run ----------------------------------------------------------------------------
    def run(self) -> SoakReport:
        self._t0 = time.monotonic()
        self.start()
        self.submit_round_until(self.config.orgs * self.config.jobs_per_org)
        schedule = (
            itertools.cycle(self.config.faults) if self.config.cycle_faults else self.config.faults
        )
        faults = iter(schedule)
        next_fault = time.monotonic() + self.config.fault_interval_s
        deadline = self._t0 + self.config.timeout_s
        next_progress = 0.0
        while True:
            unfinished = self._unfinished()
            submitting = time.monotonic() - self._t0 < self.config.duration_s
            if submitting and len(unfinished) < self.config.keep_unfinished:
                self.submit_round()
                continue
            if not unfinished and not submitting:
                break
            if time.monotonic() > deadline:
                self.report.problems.append(
                    f"{len(unfinished)} job(s) unfinished after {self.config.timeout_s:.0f} s: "
                    f"{', '.join(sorted(unfinished))}"
                )
                break
            if time.monotonic() >= next_progress:
                self.log(f"{len(self.jobs)} jobs submitted, {len(unfinished)} unfinished")
                next_progress = time.monotonic() + 10
            if time.monotonic() >= next_fault:
                kind = next(faults, None)
                if kind is not None:
                    self.inject(kind)
                next_fault = time.monotonic() + self.config.fault_interval_s
            time.sleep(1.0)
        self.poller.stop()
        self.report.wall_s = time.monotonic() - self._t0
        self.report.healthz_gaps = list(self.poller.gaps)
        self.report.healthz_polls = self.poller.polls
        self.check()
        (self.workdir / "report.json").write_text(
            json.dumps(
                {"figures": self.report.figures(), "problems": self.report.problems}, indent=2
            )
        )
        return self.report

    def submit_round_until(self, count: int) -> None:
        while len(self.jobs) < count:
            self.submit_round()

    def _unfinished(self) -> set[str]:
        unfinished = set()
        for tenant in self.tenants:
            mine = {j for j, owner in self.jobs.items() if owner is tenant}
            after = None
            while True:
                page = self._call(
                    "GET",
                    "/v1/fine_tuning/jobs",
                    tenant.headers,
                    params={"limit": 100, **({"after": after} if after else {})},
                )
                for job in page["data"]:
                    if job["id"] in mine and job["status"] not in TERMINAL:
                        unfinished.add(job["id"])
                if not page.get("has_more") or not page["data"]:
                    break
                after = page["data"][-1]["id"]
        return unfinished

    # --- the checks -------------------------------------------------------------------------
    def check(self) -> None:
        for job_id, tenant in self.jobs.items():
            result = self._check_job(job_id, tenant)
            self.report.jobs.append(result)
            self.report.problems.extend(f"{job_id}: {p}" for p in result.problems)
        for start, end in self.report.stray_gaps():
            self.report.problems.append(
                f"/healthz failed for {end - start:.1f} s at {start - self._t0:.1f} s, outside "
                "the API's own restarts"
            )

    def _events(self, job_id: str, headers: dict[str, str]) -> list[dict]:
        events, after = [], None
        while True:
            page = self._call(
                "GET",
                f"/v1/fine_tuning/jobs/{job_id}/events",
                headers,
                params={"limit": 100, **({"after": after} if after else {})},
            )
            events.extend(page["data"])
            if not page["has_more"]:
                return events[::-1]  # oldest first
            after = page["data"][-1]["id"]

    def _check_job(self, job_id: str, tenant: Tenant) -> JobResult:
        headers = tenant.headers
        job = self._call("GET", f"/v1/fine_tuning/jobs/{job_id}", headers)
        events = self._events(job_id, headers)
        steps = [e["data"]["step"] for e in events if e["type"] == "metrics"]
        totals = {e["data"]["total_steps"] for e in events if e["type"] == "metrics"}
        total = max(totals, default=0)
        replayed = sum(len((e.get("data") or {}).get("discarded_steps") or []) for e in events)
        seconds = (job.get("finished_at") or job["created_at"]) - job["created_at"]
        problems = []
        if job["status"] != "succeeded":
            problems.append(f"ended {job['status']}: {json.dumps(job.get('error'))}")
        else:
            if totals != {total} or steps != list(range(1, total + 1)):
                repeated = sorted(s for s, n in Counter(steps).items() if n > 1)
                missing = sorted(set(range(1, total + 1)) - set(steps))
                problems.append(
                    f"metrics steps not 1..{total} once each: repeated {repeated}, "
                    f"missing {missing}"
                )
            problems.extend(self._check_downloads(job, tenant, total))
        return JobResult(
            id=job_id,
            org=tenant.org,
            status=job["status"],
            error=job.get("error"),
            seconds=float(seconds),
            metric_steps=steps,
            total_steps=total,
            replayed_steps=replayed,
            problems=problems,
        )

    def _check_downloads(self, job: dict, tenant: Tenant, total: int) -> list[str]:
        problems, headers, body = [], tenant.headers, tenant.file_body
        got = requests.get(
            f"{self.base}/v1/files/{job['training_file']}/content", headers=headers, timeout=30
        )
        if got.status_code != 200 or got.content != body:
            problems.append(f"training file {job['training_file']}: {got.status_code}")
        for file_id in job["result_files"]:
            got = requests.get(
                f"{self.base}/v1/files/{file_id}/content", headers=headers, timeout=30
            )
            rows = got.text.splitlines()[1:] if got.status_code == 200 else []
            if [int(r.split(",")[0]) for r in rows] != list(range(1, total + 1)):
                problems.append(f"result file {file_id}: {got.status_code}, {len(rows)} rows")
        if not job["result_files"]:
            problems.append("no result file")
        got = requests.get(
            f"{self.base}/v1/fine_tuning/jobs/{job['id']}/adapter", headers=headers, timeout=60
        )
        try:
            with tarfile.open(fileobj=io.BytesIO(got.content), mode="r:gz") as archive:
                names = {Path(n).name for n in archive.getnames()}
        except tarfile.TarError:
            names = set()
        if not {"adapter_config.json", "adapter_model.safetensors"} <= names:
            problems.append(f"adapter: {got.status_code}, files {sorted(names)}")
        return problems

    def stop(self) -> None:
        self.poller.stop()
        self.cluster.stop()
        self.redis.kill()
        self.proxy.close()


def run_soak(
    config: SoakConfig,
    database_url: str,
    s3_endpoint: str,
    bucket: str,
    model_cache: Path,
    workdir: Path | None = None,
    log: Callable[[str], None] = print,
) -> tuple[SoakReport, Soak]:
    """Run one soak to its end; the caller reads ``soak.cluster.logs()`` if it failed."""
    workdir = workdir or Path(tempfile.mkdtemp(prefix="dorado-chaos-"))
    workdir.mkdir(parents=True, exist_ok=True)
    soak = Soak(workdir, config, database_url, s3_endpoint, bucket, model_cache, log)
    try:
        return soak.run(), soak
    finally:
        soak.stop()
