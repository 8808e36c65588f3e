"""Run the whole platform (`dorado run`: API, worker, scheduler) as real processes."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def platform_env(
    home: Path, api_key: str, model_cache: Path, port: int, extra_env: dict[str, str] | None = None
) -> dict[str, str]:
    """The environment of every process of one test platform."""
    return {
        **os.environ,
        "DORADO_HOME": str(home),
        "DORADO_PORT": str(port),
        "DORADO_BOOTSTRAP_API_KEY": api_key,
        "DORADO_MODEL_CACHE": str(model_cache),
        "DORADO_LOG_LEVEL": "INFO",
        **(extra_env or {}),
    }


class Platform:
    """``dorado run`` in its own process group, with its output in a log file."""

    def __init__(
        self, home: Path, api_key: str, model_cache: Path, extra_env: dict[str, str] | None = None
    ):
        self.home = home
        self.api_key = api_key
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.log_path = home.parent / f"{home.name}-platform.log"
        self.env = platform_env(home, api_key, model_cache, self.port, extra_env)
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 90) -> Platform:
        self.home.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [str(BIN / "dorado"), "run", "--skip-models"],
            cwd=ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"dorado run exited early:\n{self.log_tail()}")
            try:
                if requests.get(f"http://127.0.0.1:{self.port}/healthz", timeout=1).ok:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.3)
        raise TimeoutError(f"API did not come up:\n{self.log_tail()}")

    def log_tail(self, lines: int = 80) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"

    def stop(self, timeout: float = 45) -> int | None:
        """Ctrl-C, as a user would; kill the group if it does not stop in time."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        os.killpg(self.proc.pid, signal.SIGINT)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            return None
        finally:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def processes(self) -> list[int]:
        """Pids of every process started for this platform (found by its DORADO_HOME)."""
        marker = f"DORADO_HOME={self.home}".encode()
        pids = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    if marker in (entry / "environ").read_bytes().split(b"\0"):
                        pids.append(int(entry.name))
                except OSError:
                    continue
        return pids

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}
