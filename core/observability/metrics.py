"""Prometheus metrics: job and queue figures read from the database at scrape time, plus an
in-process histogram of HTTP request latency.

The job figures come from the database on every scrape (a custom collector), so every API
process reports the same, correct numbers whichever gunicorn worker answers. The HTTP
histogram lives in the process that served the request: with several gunicorn workers each
one exposes only its own requests unless prometheus-client's multiprocess mode is on
(``PROMETHEUS_MULTIPROC_DIR``, or ``DORADO_METRICS_DIR`` as an alias), in which case every
worker writes its samples to files in that folder and a scrape sums them.

Framework-free (no Flask): ``api.routes.health`` wires it to requests.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from collections.abc import Iterable, Iterator
from datetime import datetime, timezone

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Histogram,
    ProcessCollector,
    generate_latest,
    multiprocess,
    values,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from core.db.models import Job
from core.jobs.status import ALL_STATUSES, JobStatus
from core.settings import load_settings

log = logging.getLogger(__name__)

#: Always reported, even with no job: the pool of workers that serve ``dorado.jobs``.
DEFAULT_POOL = "default"
#: How many of the most recently finished jobs the duration quantiles are computed over.
DURATION_WINDOW = 200
DURATION_QUANTILES = (0.5, 0.95)
HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)

_http_registry = CollectorRegistry(auto_describe=True)
_http_histogram: Histogram | None = None
_lock = threading.Lock()


def multiprocess_dir() -> str | None:
    """The multiprocess folder, if configured (prometheus-client's own
    ``PROMETHEUS_MULTIPROC_DIR`` wins over ``DORADO_METRICS_DIR``)."""
    folder = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or os.environ.get(
        "prometheus_multiproc_dir"
    )
    if folder:
        return folder
    configured = load_settings().metrics_dir
    return str(configured) if configured else None


def configure_multiprocess() -> str | None:
    """Turn on multiprocess mode when ``DORADO_METRICS_DIR`` is set; returns the folder.

    prometheus-client decides its value storage from ``PROMETHEUS_MULTIPROC_DIR`` when it is
    imported, so the alias is copied there and the storage class chosen again. Call it before
    the first request is observed (``api.routes.health.init_app`` does).
    """
    folder = multiprocess_dir()
    if folder and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = folder
        values.ValueClass = values.get_value_class()
    if folder:
        os.makedirs(folder, exist_ok=True)
    return folder


def http_histogram() -> Histogram:
    """The request latency histogram, created on first use (after multiprocess set-up)."""
    global _http_histogram
    with _lock:
        if _http_histogram is None:
            _http_histogram = Histogram(
                "dorado_http_request_duration_seconds",
                "HTTP request latency of the API, by route template, method and status.",
                ("endpoint", "method", "status"),
                buckets=HTTP_BUCKETS,
                registry=_http_registry,
            )
        return _http_histogram


def observe_request(endpoint: str, method: str, status: int, seconds: float) -> None:
    """Record one served request."""
    http_histogram().labels(endpoint, method, str(status)).observe(seconds)


def _quantile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank quantile of an ascending list (not empty)."""
    rank = min(len(sorted_values), max(1, math.ceil(q * len(sorted_values))))
    return sorted_values[rank - 1]


class JobsCollector:
    """Reads queue depth, jobs by status, recent durations and trained tokens at scrape time.

    Built per scrape around the request's session; a database error is reported as
    ``dorado_database_up 0`` instead of failing the whole scrape.
    """

    def __init__(self, session: Session, now: datetime | None = None):
        self.session = session
        self.now = now

    def describe(self) -> Iterable[Metric]:
        """Nothing to pre-declare: the registry must not run queries when registering."""
        return []

    def collect(self) -> Iterator[Metric]:
        """Yield the metric families (queries run here)."""
        up = GaugeMetricFamily(
            "dorado_database_up", "1 when the metrics queries against the database succeeded."
        )
        try:
            families = list(self._families())
        except Exception as exc:
            # A warning, not a traceback: Prometheus scrapes every few seconds.
            log.warning("metrics: database query failed: %s", exc)
            self.session.rollback()
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from families

    def _families(self) -> Iterator[Metric]:
        counts = dict(
            self.session.execute(select(Job.status, func.count()).group_by(Job.status)).all()
        )
        by_status = GaugeMetricFamily(
            "dorado_jobs", "Jobs in the database by status.", labels=["status"]
        )
        # Every status, so that a status with no job is reported as 0 rather than missing.
        for status in sorted(set(ALL_STATUSES) | set(counts)):
            by_status.add_metric([status], counts.get(status, 0))
        yield by_status

        pool = func.coalesce(Job.pool, DEFAULT_POOL)
        by_pool: dict[str, dict] = {DEFAULT_POOL: {}}
        for name, status, count, oldest in self.session.execute(
            select(pool, Job.status, func.count(), func.min(Job.created_at))
            .where(Job.status.in_((JobStatus.QUEUED, JobStatus.RUNNING)))
            .group_by(pool, Job.status)
        ):
            by_pool.setdefault(name, {})[status] = (count, oldest)
        depth = GaugeMetricFamily(
            "dorado_queue_depth",
            "Jobs waiting for a worker (status queued), by worker pool.",
            labels=["pool"],
        )
        running = GaugeMetricFamily(
            "dorado_pool_running_jobs", "Jobs running, by worker pool.", labels=["pool"]
        )
        age = GaugeMetricFamily(
            "dorado_queue_oldest_age_seconds",
            "Age of the oldest queued job (0 when none), by worker pool.",
            labels=["pool"],
        )
        now = self.now or datetime.now(timezone.utc)
        for name in sorted(by_pool):
            queued, oldest = by_pool[name].get(JobStatus.QUEUED, (0, None))
            depth.add_metric([name], queued)
            running.add_metric([name], by_pool[name].get(JobStatus.RUNNING, (0, None))[0])
            if oldest is not None and oldest.tzinfo is None:
                oldest = oldest.replace(tzinfo=timezone.utc)
            age.add_metric([name], max(0.0, (now - oldest).total_seconds()) if oldest else 0)
        yield depth
        yield running
        yield age

        tokens = self.session.scalar(select(func.coalesce(func.sum(Job.trained_tokens), 0)))
        yield CounterMetricFamily(
            "dorado_trained_tokens",
            "Tokens trained by all jobs in the database.",
            value=float(tokens or 0),
        )

        yield from self._durations()

    def _durations(self) -> Iterator[Metric]:
        rows = self.session.execute(
            select(Job.status, Job.started_at, Job.finished_at)
            .where(Job.started_at.is_not(None), Job.finished_at.is_not(None))
            .order_by(Job.finished_at.desc())
            .limit(DURATION_WINDOW)
        ).all()
        durations: dict[str, list[float]] = {}
        for status, started, finished in rows:
            if started is None or finished is None:  # excluded by the query; narrows the type
                continue
            durations.setdefault(status, []).append(max(0.0, (finished - started).total_seconds()))
        quantiles = GaugeMetricFamily(
            "dorado_job_duration_seconds",
            f"Wall time from first start to finish over the last {DURATION_WINDOW} finished "
            "jobs, by final status and quantile.",
            labels=["status", "quantile"],
        )
        window = GaugeMetricFamily(
            "dorado_job_duration_window_jobs",
            "How many finished jobs the duration quantiles were computed over.",
            labels=["status"],
        )
        for status in sorted(durations):
            ordered = sorted(durations[status])
            for q in DURATION_QUANTILES:
                quantiles.add_metric([status, str(q)], _quantile(ordered, q))
            window.add_metric([status], len(ordered))
        yield quantiles
        yield window


class _HttpCollector:
    """Re-exposes this process's HTTP histogram inside a per-scrape registry."""

    def collect(self) -> Iterator[Metric]:
        yield from _http_registry.collect()


def render_metrics(session: Session) -> tuple[bytes, str]:
    """The Prometheus text exposition (body, content type) for one scrape."""
    registry = CollectorRegistry(auto_describe=False)
    if multiprocess_dir():
        multiprocess.MultiProcessCollector(registry)
    else:
        registry.register(_HttpCollector())
        ProcessCollector(registry=registry)
    registry.register(JobsCollector(session))
    return generate_latest(registry), CONTENT_TYPE_LATEST


def mark_process_dead(pid: int) -> None:
    """Drop a dead process's live gauges from the multiprocess folder (gunicorn hook)."""
    if multiprocess_dir():
        multiprocess.mark_process_dead(pid)
