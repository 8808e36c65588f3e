"""``dorado run`` when its training worker is SIGKILLed mid-job (what the kernel's OOM killer
does): the API keeps answering, the launcher starts a new worker, and the job resumes from
its checkpoint with every step exactly once in its metrics."""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path

import requests
from openai import OpenAI

from tests.conftest import MODEL_CACHE
from tests.e2e.platform import Platform
from tests.faults.helpers import csv_steps, finished, messages, wait_until
from tests.faults.test_worker_loss import TOTAL, checkpointed_step, start_long_job

# Short lease and sweeps, as in tests/faults/cluster.py: the lost lease is noticed in seconds.
FAST_SWEEPS = {
    "DORADO_LEASE_SECONDS": "6",
    "DORADO_SWEEP_INTERVAL_SECONDS": "1",
    "DORADO_REPUBLISH_AFTER_SECONDS": "3",
}


def training_worker_pid(platform: Platform) -> int | None:
    """The pid of the platform's training worker (the Celery worker of ``dorado.jobs``)."""
    for pid in platform.processes():
        try:
            args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"worker" in args and b"dorado.jobs" in args:
            return pid
    return None


def api_answers(platform: Platform) -> bool:
    return requests.get(f"http://127.0.0.1:{platform.port}/healthz", timeout=5).ok


def test_a_killed_worker_is_restarted_and_its_job_resumes(tmp_path):
    platform = Platform(tmp_path / "home", "dor-restart-key-000000000000", MODEL_CACHE, FAST_SWEEPS)
    platform.start()
    try:
        client = OpenAI(base_url=platform.base_url, api_key=platform.api_key, max_retries=0)
        job = start_long_job(client)
        wait_until(lambda: checkpointed_step(client, job.id) >= 20, 180, "a first checkpoint")
        first = training_worker_pid(platform)
        assert first is not None
        os.kill(first, signal.SIGKILL)

        second = wait_until(
            lambda: (pid := training_worker_pid(platform)) not in (None, first) and pid,
            60,
            "the launcher to start a new worker",
        )
        assert platform.proc is not None and platform.proc.poll() is None, platform.log_tail()
        assert api_answers(platform)
        saved = checkpointed_step(client, job.id)

        done = finished(client, job.id, 600)
        assert done.status == "succeeded", (done.error, platform.log_tail())
        assert csv_steps(client, done.result_files[0]) == list(range(1, TOTAL + 1))
        events = messages(client, job.id)
        assert any("stopped responding" in m for m in events)
        resumed = [m for m in events if m.startswith("Resumed from step")]
        assert resumed and int(re.findall(r"\d+", resumed[-1])[0]) >= saved
        assert events.count("The job has successfully completed") == 1
        assert training_worker_pid(platform) == second  # nothing else died meanwhile
        assert api_answers(platform)
        log = platform.log_tail(400)
        assert "worker was killed by SIGKILL; restarting it in 1.0 s" in log
        assert "restarting worker" in log
        assert platform.stop() == 0, platform.log_tail()  # Ctrl-C still stops everything
    finally:
        platform.stop()
