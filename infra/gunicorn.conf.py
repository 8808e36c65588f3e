"""gunicorn settings for the API image: ``gunicorn --config infra/gunicorn.conf.py api.wsgi:app``.

Environment: ``PORT`` (8000), ``WEB_CONCURRENCY`` (worker processes, 2),
``GUNICORN_WORKER_CONNECTIONS`` (1000 per process: gevent, one greenlet per connection, so that
slow clients cannot occupy the workers; api/server.py), ``GUNICORN_TIMEOUT`` (300 s),
``GUNICORN_KEEPALIVE`` (75 s: longer than the idle timeout of whatever is in front, see
docs/deploy.md "Timeouts"). With
``PROMETHEUS_MULTIPROC_DIR`` (or ``DORADO_METRICS_DIR``) set, the folder is emptied at start
and a dead worker's samples are dropped, as prometheus-client's multiprocess mode requires.
"""

from __future__ import annotations

import os
import shutil

bind = f"0.0.0.0:{os.environ.get('PORT', '8000')}"
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
# Same worker and logger as `dorado run` (core/processes.py): greenlets, not a thread pool,
# and an access log with credentials in URLs redacted.
worker_class = "api.server.GeventWorker"
worker_connections = int(os.environ.get("GUNICORN_WORKER_CONNECTIONS", "1000"))
logger_class = "api.server.AccessLogger"
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "300"))
# gunicorn's default (2 s) closes an idle connection while a client polling every ~2 s, or a
# load balancer pooling upstream connections (typically 60 s), is about to reuse it: that
# request fails with "Server disconnected without sending a response". The side in front
# must always be the one to close an idle connection. Same value as core/processes.py KEEPALIVE_S.
keepalive = int(os.environ.get("GUNICORN_KEEPALIVE", "75"))
graceful_timeout = 30
# No control socket: its default path (~/.gunicorn/gunicorn.ctl) is shared by every gunicorn
# of the user, and nothing in Dorado uses gunicornc (containers are stopped with signals).
control_socket_disable = True
accesslog = "-"
# Trust X-Forwarded-* only from these (set to the ingress's addresses, or "*" behind one).
forwarded_allow_ips = os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1")


def _metrics_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or os.environ.get("DORADO_METRICS_DIR")


def on_starting(server) -> None:
    """Start from an empty multiprocess folder: stale files would resurrect old samples."""
    folder = _metrics_dir()
    if folder:
        shutil.rmtree(folder, ignore_errors=True)
        os.makedirs(folder, exist_ok=True)


def child_exit(server, worker) -> None:
    """Drop the exited worker's live samples (prometheus-client multiprocess mode)."""
    if _metrics_dir():
        from core.observability.metrics import mark_process_dead

        mark_process_dead(worker.pid)
