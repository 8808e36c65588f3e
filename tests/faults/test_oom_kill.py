"""The kernel's OOM killer ends a single-process job's training process: the job fails as
out_of_memory with what to change, at once and without a retry into the same OOM, and the
worker lives on. A SIGKILL the kernel did not count as an OOM kill stays a lost process,
retried from the last checkpoint.

The OOM kill is real: the worker runs in a memory cgroup of its own (v1 or v2, created under
this test's cgroup; we are root) whose limit leaves no room for a training process."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from openai import OpenAI

from cli.main import worker_command
from tests.conftest import MODEL_CACHE
from tests.faults.cluster import Cluster
from tests.faults.helpers import (
    finished,
    messages,
    rank_pids,
    succeeded,
    upload_pirate,
    wait_until,
)

# Room left above the idle worker: far less than a training process needs (importing torch,
# transformers and peft alone takes about 450 MiB).
HEADROOM = 128 * 2**20
# Start the worker (pid in argv[1]'s cgroup.procs), then exec the real command line.
JOIN_CGROUP = (
    "import os, sys; open(sys.argv[1], 'w').write(str(os.getpid())); "
    "os.execv(sys.argv[2], sys.argv[2:])"
)


@dataclass(frozen=True)
class MemoryCgroup:
    """A memory cgroup this test made; v1 and v2 name their files differently."""

    path: Path
    v2: bool

    def procs(self) -> Path:
        return self.path / "cgroup.procs"

    def usage(self) -> int:
        name = "memory.current" if self.v2 else "memory.usage_in_bytes"
        return int((self.path / name).read_text())

    def limit(self, limit: int) -> None:
        if self.v2:
            (self.path / "memory.max").write_text(str(limit))
            with contextlib.suppress(OSError):  # no swap accounting: no swap to spill into
                (self.path / "memory.swap.max").write_text("0")
        else:
            (self.path / "memory.limit_in_bytes").write_text(str(limit))
            with contextlib.suppress(OSError):
                (self.path / "memory.memsw.limit_in_bytes").write_text(str(limit))

    def oom_kills(self) -> int:
        text = (self.path / ("memory.events" if self.v2 else "memory.oom_control")).read_text()
        return int(text.split("oom_kill ")[1].split()[0])


def own_cgroup() -> tuple[Path, bool] | None:
    """This process's memory cgroup directory and whether it is v2, None if it has none."""
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            return Path("/sys/fs/cgroup/memory") / path.lstrip("/"), False
        if controllers == "":
            where = Path("/sys/fs/cgroup") / path.lstrip("/")
            if "memory" in (where / "cgroup.subtree_control").read_text().split():
                return where, True
    return None


@pytest.fixture
def memory_cgroup() -> Iterator[MemoryCgroup]:
    found = own_cgroup() if sys.platform == "linux" else None
    if found is None:
        pytest.skip("no memory cgroup to nest one in (not Linux, or memory not delegated)")
    parent, v2 = found
    path = parent / f"dorado-oom-test-{uuid.uuid4().hex[:8]}"
    try:
        path.mkdir()
    except OSError as exc:
        pytest.skip(f"cannot create a memory cgroup here ({exc}): run as root with cgroups")
    yield MemoryCgroup(path, v2)
    # The cluster's teardown has killed its members by now; rmdir waits for them to be reaped.
    deadline = time.monotonic() + 30
    while True:
        try:
            path.rmdir()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    running = Cluster(tmp_path / "home", "dor-oom-kill-key-00000000000", MODEL_CACHE)
    running.start_platform()
    yield running
    running.stop()


def test_an_oom_killed_training_process_fails_the_job_as_out_of_memory(
    memory_cgroup: MemoryCgroup, cluster: Cluster
):
    # (memory_cgroup first: it is removed after the cluster has stopped its members.)
    client = OpenAI(base_url=cluster.base_url, api_key=cluster.api_key, max_retries=0)
    worker = cluster._spawn(
        "tight",
        [
            sys.executable,
            "-c",
            JOIN_CGROUP,
            str(memory_cgroup.procs()),
            *worker_command(name="tight"),
        ],
    )
    wait_until(lambda: "registered" in cluster.log("tight", 1000), 120, "the worker to register")
    # The limit leaves room for the worker and its rank server (torch & co. imported), no more.
    wait_until(
        lambda: "training process server ready" in cluster.log("tight", 1000),
        120,
        "the worker's training process server",
    )
    assert str(worker.pid) in memory_cgroup.procs().read_text().split()
    memory_cgroup.limit(memory_cgroup.usage() + HEADROOM)
    kills_before = memory_cgroup.oom_kills()

    training = upload_pirate(client)
    job = client.fine_tuning.jobs.create(
        model="tiny-random-llama",
        training_file=training.id,
        hyperparameters={"n_epochs": 1, "batch_size": 1},
        extra_body={"adapter": {"type": "lora"}},
    )
    done = finished(client, job.id)

    logs = cluster.logs()
    assert memory_cgroup.oom_kills() > kills_before, logs  # the kernel did kill
    assert done.status == "failed", logs
    assert done.error.code == "out_of_memory", (done.error, logs)
    assert done.error.param == "max_seq_length"
    assert "OOM killer ended the training process" in done.error.message
    for advice in ("max_seq_length", "gradient_checkpointing", '"nf4"', "GPUs"):
        assert advice in done.error.message, done.error.message
    events = messages(client, job.id)
    assert not any("Retrying" in m or "stopped responding" in m for m in events), events
    assert worker.poll() is None, logs  # the worker was not the one killed
    assert not rank_pids(worker.pid)


def test_a_sigkill_the_kernel_did_not_count_is_retried(cluster: Cluster):
    client = OpenAI(base_url=cluster.base_url, api_key=cluster.api_key, max_retries=0)
    worker = cluster.start_worker("plain")
    training = upload_pirate(client)
    job = client.fine_tuning.jobs.create(
        model="tiny-random-llama",
        training_file=training.id,
        hyperparameters={"n_epochs": 2, "batch_size": 2},
        extra_body={"adapter": {"type": "lora"}, "checkpoint_every_n_steps": 6},
    )
    wait_until(
        lambda: any(c.step_number >= 6 for c in client.fine_tuning.jobs.checkpoints.list(job.id)),
        180,
        "a first checkpoint",
    )
    trainers = rank_pids(worker.pid)
    assert len(trainers) == 1, trainers  # one isolated training process, not the worker
    os.kill(trainers[0], signal.SIGKILL)

    succeeded(client, cluster, job.id)
    events = messages(client, job.id)
    lost = [m for m in events if "training_process_lost" in m]
    assert len(lost) == 1 and "died without a word (killed by signal 9)" in lost[0], events
    assert "Retrying from the last checkpoint" in lost[0]
    assert not any("out_of_memory" in m for m in events), events
    assert any(m.startswith("Resumed from step") for m in events), events
    assert worker.poll() is None
