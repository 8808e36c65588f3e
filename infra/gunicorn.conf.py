"""gunicorn settings for the API image: ``gunicorn --config infra/gunicorn.conf.py api.wsgi:app``.

Environment: ``PORT`` (8000), ``WEB_CONCURRENCY`` (worker processes, 2), ``GUNICORN_THREADS``
(4), ``GUNICORN_TIMEOUT`` (300 s: large uploads stream through a worker). With
``PROMETHEUS_MULTIPROC_DIR`` (or ``DORADO_METRICS_DIR``) set, the folder is emptied at start
and a dead worker's samples are dropped, as prometheus-client's multiprocess mode requires.
"""

from __future__ import annotations

import os
import shutil

bind = f"0.0.0.0:{os.environ.get('PORT', '8000')}"
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
threads = int(os.environ.get("GUNICORN_THREADS", "4"))
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "300"))
graceful_timeout = 30
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
