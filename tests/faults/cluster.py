"""The platform's parts as separate real processes, so a test can kill or restart any one."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import requests

from cli.main import api_command, validator_command, worker_command
from tests.e2e.platform import ROOT, free_port, platform_env

BIN = Path(sys.executable).parent


class Cluster:
    def __init__(
        self, home: Path, api_key: str, model_cache: Path, extra_env: dict[str, str] | None = None
    ):
        self.home = home
        self.api_key = api_key
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        # Short lease and sweeps: a lost worker's job is noticed within seconds.
        self.env = platform_env(
            home,
            api_key,
            model_cache,
            self.port,
            {
                "DORADO_LEASE_SECONDS": "6",
                "DORADO_SWEEP_INTERVAL_SECONDS": "1",
                "DORADO_REPUBLISH_AFTER_SECONDS": "3",
                **(extra_env or {}),
            },
        )
        self.procs: dict[str, subprocess.Popen] = {}
        home.mkdir(parents=True, exist_ok=True)

    def _spawn(
        self, name: str, command: list[str], env: dict[str, str] | None = None
    ) -> subprocess.Popen:
        log = open(self.home.parent / f"{self.home.name}-{name}.log", "ab")
        proc = subprocess.Popen(
            command,
            cwd=ROOT,
            env={**self.env, **(env or {})},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.procs[name] = proc
        return proc

    def migrate(self) -> None:
        subprocess.run(
            [str(BIN / "dorado"), "migrate"],
            cwd=ROOT,
            env=self.env,
            check=True,
            capture_output=True,
        )

    def start_api(self, timeout: float = 60) -> None:
        self._spawn("api", api_command("127.0.0.1", self.port, workers=1))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if requests.get(f"http://127.0.0.1:{self.port}/healthz", timeout=1).ok:
                    return
            except requests.RequestException:
                time.sleep(0.2)
        raise TimeoutError(self.log("api"))

    def start_scheduler(self) -> None:
        self._spawn("scheduler", [sys.executable, "-m", "cli.main", "scheduler"])

    def start_validator(self) -> subprocess.Popen:
        return self._spawn("validator", validator_command(name="validator"))

    def start_platform(self) -> None:
        """Everything but the training workers: the schema, the API, the scheduler and the
        validator."""
        self.migrate()
        self.start_api()
        self.start_scheduler()
        self.start_validator()

    def start_worker(self, name: str, env: dict[str, str] | None = None) -> subprocess.Popen:
        """A training worker; ``env`` adds settings of its own (e.g. DORADO_WORKER_POOL)."""
        return self._spawn(name, worker_command(name=name), env)

    def signal(self, name: str, sig: int) -> None:
        os.killpg(self.procs[name].pid, sig)

    def wait(self, name: str, timeout: float = 60) -> int:
        return self.procs[name].wait(timeout=timeout)

    def log(self, name: str, lines: int = 60) -> str:
        path = self.home.parent / f"{self.home.name}-{name}.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def logs(self) -> str:
        return "\n\n".join(f"== {name} ==\n{self.log(name)}" for name in self.procs)

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass
            # Whatever of its group outlived the leader (a worker's child, say) would go on
            # consuming from the next test's broker database.
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
