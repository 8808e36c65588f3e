from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

from openai import OpenAI

from tests.conftest import EXAMPLES

if TYPE_CHECKING:
    from tests.faults.cluster import Cluster

FINAL_STATUSES = ("succeeded", "failed", "cancelled")


PIRATE_EXAMPLES = 52
"""The examples in examples/pirate.jsonl, the file :func:`upload_pirate` uploads."""


def upload_pirate(client: OpenAI):
    with open(EXAMPLES / "pirate.jsonl", "rb") as handle:
        return client.files.create(file=handle, purpose="fine-tune")


def wait_until(predicate, timeout: float, what: str, interval: float = 0.3):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out waiting for {what}")


def finished(client: OpenAI, job_id: str, timeout: float = 300):
    """The job once it has reached a final status, whichever it is."""
    return wait_until(
        lambda: (j := client.fine_tuning.jobs.retrieve(job_id)).status in FINAL_STATUSES and j,
        timeout,
        "the job to finish",
        interval=0.5,
    )


def succeeded(client: OpenAI, cluster: Cluster, job_id: str, timeout: float = 300):
    """The job once finished, asserting that it succeeded (else its error and the logs)."""
    job = finished(client, job_id, timeout)
    assert job.status == "succeeded", (job.error, cluster.logs())
    return job


def messages(client: OpenAI, job_id: str) -> list[str]:
    """Every event message of a job, oldest first."""
    return [
        e.message for e in reversed(list(client.fine_tuning.jobs.list_events(job_id, limit=100)))
    ]


def csv_steps(client: OpenAI, file_id: str) -> list[int]:
    rows = client.files.content(file_id).text.splitlines()[1:]
    return [int(r.split(",")[0]) for r in rows]


def metrics_steps(client: OpenAI, job_id: str) -> list[int]:
    """The steps of a job's metrics events, oldest first (each should appear once)."""
    events = reversed(list(client.fine_tuning.jobs.list_events(job_id, limit=100)))
    return [e.data["step"] for e in events if e.type == "metrics"]


def _children(pid: int) -> list[tuple[int, bytes]]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (entry / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue
        if ppid == pid:
            found.append((int(entry.name), cmdline))
    return found


def rank_pids(worker_pid: int) -> list[int]:
    """The worker's training ranks: the children of its rank server (a multiprocessing fork
    server), but for the warm-up child, which lives for an instant."""
    servers = [pid for pid, cmd in _children(worker_pid) if b"forkserver" in cmd]
    return sorted(pid for server in servers for pid, _ in _children(server))
