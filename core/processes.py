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
        "--access-logfile",
        "-",
        "worker.inference.server:create_app()",
    ]
