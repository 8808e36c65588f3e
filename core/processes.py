"""Command lines of the platform's long-running processes that more than one launcher starts.

``dorado run`` (cli) and ``dorado-worker serve-inference`` (worker) both start the inference
service; they may not import each other, so its command line lives here.
"""

from __future__ import annotations

import os
import shutil
import sys


def executable(name: str) -> str:
    """An executable installed next to this Python (the venv), else from PATH."""
    candidate = os.path.join(os.path.dirname(sys.executable), name)
    return candidate if os.path.exists(candidate) else (shutil.which(name) or name)


# gunicorn's default keep-alive (2 s) is shorter than the pause of a client polling every few
# seconds: the client then reuses its connection just as the server closes it, and the request
# fails with "Server disconnected without sending a response". An idle connection must be
# closed by the side in front (client pools: 5 s for httpx/openai; load balancers: typically
# 60 s), never by the API first, hence a keep-alive longer than both. infra/gunicorn.conf.py
# uses the same value (GUNICORN_KEEPALIVE); docs/deploy.md "Timeouts" lists them all.
KEEPALIVE_S = 75
# A request may take this long (large uploads stream through a worker thread).
API_TIMEOUT_S = 300
# On SIGTERM, requests in progress get this long to finish.
GRACEFUL_TIMEOUT_S = 30


def gunicorn_options() -> list[str]:
    """Options every gunicorn the launcher starts shares.

    No control socket: gunicorn's default path ($XDG_RUNTIME_DIR or ~/.gunicorn/gunicorn.ctl)
    is one per user, so the API's and the inference service's masters (and a second platform
    on the machine) would take it from each other; Dorado stops its servers with signals.
    """
    return [
        "--keep-alive",
        str(KEEPALIVE_S),
        "--graceful-timeout",
        str(GRACEFUL_TIMEOUT_S),
        "--no-control-socket",
        "--access-logfile",
        "-",
    ]


# The API's gunicorn worker: gevent (one greenlet per connection), so that clients sending
# slowly cannot occupy every worker (api/server.py says how). Per worker process.
API_WORKER_CLASS = "api.server.GeventWorker"
API_WORKER_CONNECTIONS = 1000
API_LOGGER_CLASS = "api.server.AccessLogger"


def api_server_options() -> list[str]:
    """The API's own gunicorn options (the inference service stays threaded: torch)."""
    return [
        "--worker-class",
        API_WORKER_CLASS,
        "--worker-connections",
        str(API_WORKER_CONNECTIONS),
        "--logger-class",
        API_LOGGER_CLASS,
    ]


def inference_command(port: int, host: str = "127.0.0.1") -> list[str]:
    """The inference service under gunicorn, bound to ``host:port``."""
    # One process holds the models once; threads wait on its generation lock. Loopback by
    # default: the service trusts its caller (the API has checked who may use which model).
    return [
        executable("gunicorn"),
        "--bind",
        f"{host}:{port}",
        "--workers",
        "1",
        "--threads",
        "8",
        "--timeout",
        "600",
        *gunicorn_options(),
        "worker.inference.server:create_app()",
    ]
