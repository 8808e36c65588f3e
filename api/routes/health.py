"""Operational endpoints outside ``/v1`` (no API key): liveness, readiness and metrics.

* ``GET /healthz``: the process answers; touches no dependency (a liveness probe must not
  restart the API because Postgres is down).
* ``GET /readyz``: the database (``SELECT 1``), the object store and, unless it is the
  filesystem transport, the Celery broker. 200 with each check's result, or 503 naming the
  failing checks. Errors are reported by type only (the endpoint is unauthenticated); the
  details go to the log.
* ``GET /metrics``: Prometheus text format (see ``core.observability.metrics``).

Keep ``/metrics`` and ``/readyz`` off the public Ingress; Prometheus scrapes the Service.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from flask import Blueprint, Flask, Response, g, request
from sqlalchemy import text

from api.context import db, dorado
from core.observability import metrics

log = logging.getLogger(__name__)

bp = Blueprint("health", __name__)

#: Seconds a store or broker check may take before it counts as failed. A readiness probe
#: that hangs is worse than one that fails: Kubernetes would wait for its own timeout.
CHECK_TIMEOUT = 3.0
#: Object-store prefix listed by the readiness check (it needs not exist).
PROBE_PREFIX = "health"


def init_app(app: Flask) -> None:
    """Register the blueprint and the request-latency hooks."""
    metrics.configure_multiprocess()
    app.register_blueprint(bp)

    @app.before_request
    def _start_timer() -> None:
        g.metrics_started = time.perf_counter()

    @app.after_request
    def _observe(response: Response) -> Response:
        started = g.pop("metrics_started", None)
        if started is not None:
            rule = request.url_rule
            # The route template, never the raw path: ids in paths would explode cardinality.
            endpoint = rule.rule if rule is not None else "<unmatched>"
            metrics.observe_request(
                endpoint, request.method, response.status_code, time.perf_counter() - started
            )
        return response


@bp.get("/healthz")
def healthz() -> dict[str, str]:
    """Liveness: the process is up."""
    return {"status": "ok"}


@bp.get("/readyz")
def readyz() -> tuple[dict[str, Any], int]:
    """Readiness: every dependency answers."""
    context = dorado()
    settings, store = context.settings, context.store
    checks = {
        "database": _check_database(),
        # Listing exercises the credentials, the bucket and the network in one cheap call.
        "object_store": _run_with_timeout("object_store", lambda: store.list_keys(PROBE_PREFIX)),
    }
    if settings.uses_filesystem_broker:
        checks["broker"] = {"ok": True, "skipped": "filesystem transport"}
    else:
        checks["broker"] = _run_with_timeout("broker", lambda: _check_broker(settings.broker_url))
    failing = [name for name, result in checks.items() if not result["ok"]]
    if failing:
        return {"status": "unavailable", "failing": failing, "checks": checks}, 503
    return {"status": "ready", "checks": checks}, 200


@bp.get("/metrics")
def prometheus_metrics() -> Response:
    """Prometheus scrape endpoint."""
    body, content_type = metrics.render_metrics(db())
    return Response(body, status=200, content_type=content_type)


def _check_database() -> dict[str, Any]:
    started = time.perf_counter()
    try:
        db().execute(text("SELECT 1"))
    except Exception as exc:
        log.warning("readyz: database check failed: %s", exc)
        db().rollback()
        return _failed(exc, started)
    return _passed(started)


def _check_broker(url: str) -> None:
    from kombu import Connection

    with Connection(url, connect_timeout=CHECK_TIMEOUT) as connection:
        connection.ensure_connection(
            max_retries=1, interval_start=0, interval_step=0, timeout=int(CHECK_TIMEOUT)
        )


def _run_with_timeout(name: str, check: Callable[[], object]) -> dict[str, Any]:
    """Run ``check`` in a thread; a check still running after CHECK_TIMEOUT has failed.

    A check that hangs is left to finish on its own client timeout (a daemon thread), so a
    probe answers in bounded time even when S3 or the broker black-holes connections.
    """
    outcome: dict[str, BaseException | None] = {}
    started = time.perf_counter()

    def target() -> None:
        try:
            check()
            outcome["error"] = None
        except BaseException as exc:  # reported by the probe, never raised in the thread
            outcome["error"] = exc

    thread = threading.Thread(target=target, name=f"readyz-{name}", daemon=True)
    thread.start()
    thread.join(CHECK_TIMEOUT)
    if "error" not in outcome:
        log.warning("readyz: %s check timed out after %.1f s", name, CHECK_TIMEOUT)
        return _failed(TimeoutError(), started)
    error = outcome["error"]
    if error is not None:
        log.warning("readyz: %s check failed: %s", name, error)
        return _failed(error, started)
    return _passed(started)


def _passed(started: float) -> dict[str, Any]:
    return {"ok": True, "ms": round((time.perf_counter() - started) * 1000, 1)}


def _failed(exc: BaseException, started: float) -> dict[str, Any]:
    return {
        "ok": False,
        "error": type(exc).__name__,
        "ms": round((time.perf_counter() - started) * 1000, 1),
    }
