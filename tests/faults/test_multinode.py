"""Multi-node jobs through the platform: each "node" is its own Celery worker process (a host,
here all on localhost, one gloo rank each) on PostgreSQL and Redis. A two-node job waits while
only one host is free (nobody booked), then runs on both: the operators see the gang in
`dorado-admin queue` and `workers`, and the job succeeds with exact counts. A host SIGKILLed
mid-training fails the attempt on the other host too, and the job resumes from its checkpoint
on two hosts, every step exactly once in its metrics. A host stopped gracefully (SIGTERM) has
the leader checkpoint and re-queue the job instead, with no retry counted."""

from __future__ import annotations

import os
import re
import signal
import time

import pytest
from openai import OpenAI

from tests.admin.helpers import dorado_admin_json
from tests.conftest import MODEL_CACHE
from tests.faults.cluster import Cluster
from tests.faults.helpers import (
    PIRATE_EXAMPLES,
    csv_steps,
    messages,
    rank_pids,
    succeeded,
    upload_pirate,
    wait_until,
)


@pytest.fixture
def cluster(tmp_path, postgres_url, redis_url):
    running = Cluster(
        tmp_path / "home",
        "dor-multinode-key-00000000000",
        MODEL_CACHE,
        {
            "DORADO_DATABASE_URL": postgres_url,
            "DORADO_BROKER_URL": redis_url,
            "DORADO_WORKER_HEARTBEAT_SECONDS": "1",
            "DORADO_WORKER_CPU_PROCESSES": "1",
            "DORADO_WORKER_ADDRESS": "127.0.0.1",
            "DORADO_GANG_JOIN_SECONDS": "60",
        },
    )
    running.start_platform()
    yield running
    running.stop()


@pytest.fixture
def client(cluster: Cluster) -> OpenAI:
    return OpenAI(base_url=cluster.base_url, api_key=cluster.api_key, max_retries=0)


def _workers(cluster: Cluster) -> dict[str, dict]:
    return {w["name"].split("@")[0]: w for w in dorado_admin_json(cluster.env, "workers")}


def _gang(cluster: Cluster, job_id: str) -> tuple[str, str]:
    """(leader, follower) of a running two-node job, as `dorado-admin queue` shows them."""
    entry = wait_until(
        lambda: next(
            (
                e
                for e in dorado_admin_json(cluster.env, "queue")
                if e["id"] == job_id and e["hosts"]
            ),
            None,
        ),
        60,
        "the gang in `queue`",
    )
    leader, follower = (host.split("@")[0] for host in entry["hosts"])
    return leader, follower


def _create(client: OpenAI, epochs: int = 2, **extra):
    training = upload_pirate(client)
    return client.fine_tuning.jobs.create(
        model="tiny-random-llama",
        training_file=training.id,
        hyperparameters={"n_epochs": epochs, "batch_size": 4},
        extra_body={"adapter": {"type": "lora"}, "nodes": 2, **extra},
    )


def test_a_two_node_job_waits_for_two_hosts_then_trains_on_both(client, cluster):
    cluster.start_worker("node-a")
    wait_until(lambda: "node-a" in _workers(cluster), 60, "node-a to register")
    job = _create(client)
    wait_until(lambda: client.fine_tuning.jobs.retrieve(job.id).status == "queued", 60, "queued")
    time.sleep(3)  # several wake-ups and sweeps: one free host is not enough
    assert client.fine_tuning.jobs.retrieve(job.id).status == "queued"
    assert _workers(cluster)["node-a"]["state"] == "idle"
    assert _workers(cluster)["node-a"]["gang"] is None
    [entry] = dorado_admin_json(cluster.env, "queue")
    assert (entry["id"], entry["nodes"], entry["hosts"]) == (job.id, 2, None)
    assert entry["waiting"] == "needs 2 hosts; pool default has 1 live worker"

    cluster.start_worker("node-b")
    wait_until(lambda: client.fine_tuning.jobs.retrieve(job.id).status == "running", 60, "running")
    # The gang as operators see it: the claimer leads, the other host is node 1.
    leader, follower = _gang(cluster, job.id)
    assert {leader, follower} == {"node-a", "node-b"}
    shown = wait_until(
        lambda: (w := _workers(cluster))[follower]["gang"] and w, 30, "the gang in `workers`"
    )
    assert shown[follower]["gang"] == {"job_id": job.id, "node_rank": 1, "joined": True}
    assert shown[follower]["current_job_id"] == job.id
    assert shown[leader]["current_job_id"] == job.id and shown[leader]["gang"] is None
    gang = dorado_admin_json(cluster.env, "jobs", "show", job.id)["gang"]
    assert [(m["worker"].split("@")[0], m["node_rank"]) for m in gang] == [
        (leader, 0),
        (follower, 1),
    ]

    done = succeeded(client, cluster, job.id)
    steps = 2 * -(-PIRATE_EXAMPLES // 4)
    events = messages(client, job.id)
    assert any(m.startswith("Running on 2 hosts: " + leader) for m in events), events
    assert any(m.startswith("Training a lora adapter") and "cpu x 2" in m for m in events), events
    assert done.model_extra["validation"]["tokens"] * 2 == done.trained_tokens  # exact count
    assert csv_steps(client, done.result_files[0]) == list(range(1, steps + 1))
    assert "joined as node 1 of 2" in cluster.log(follower, 400)
    # Both hosts are free again.
    after = wait_until(
        lambda: (
            (w := _workers(cluster))
            and all(x["state"] == "idle" and x["gang"] is None for x in w.values())
            and w
        ),
        30,
        "both hosts idle",
    )
    assert set(after) == {"node-a", "node-b"}


@pytest.mark.parametrize("victim", ["follower", "leader"])
def test_a_killed_host_resumes_the_job_on_two_hosts(client, cluster, victim):
    cluster.start_worker("node-a")
    cluster.start_worker("node-b")
    wait_until(lambda: len(_workers(cluster)) == 2, 60, "two hosts registered")
    job = _create(client, checkpoint_every_n_steps=6)
    total = 2 * -(-PIRATE_EXAMPLES // 4)
    wait_until(
        lambda: any(c.step_number >= 6 for c in client.fine_tuning.jobs.checkpoints.list(job.id)),
        180,
        "a first checkpoint",
    )
    leader, follower = _gang(cluster, job.id)
    killed = leader if victim == "leader" else follower
    survivor = follower if killed == leader else leader
    assert rank_pids(cluster.procs[killed].pid), cluster.logs()
    os.killpg(cluster.procs[killed].pid, signal.SIGKILL)
    cluster.procs[killed].wait()
    # The other host's part of the attempt ends too (it frees its process)...
    wait_until(lambda: not rank_pids(cluster.procs[survivor].pid), 60, "the survivor to stop")
    # ...and a new host takes the killed one's place.
    cluster.start_worker("node-c")

    done = succeeded(client, cluster, job.id)
    events = messages(client, job.id)
    resumed = [m for m in events if m.startswith("Resumed from step")]
    assert resumed and int(re.findall(r"\d+", resumed[-1])[0]) >= 6, events
    gangs = [m for m in events if m.startswith("Running on 2 hosts")]
    assert len(gangs) >= 2, events
    assert events.count("The job has successfully completed") == 1
    # Every step exactly once in the results, whatever was trained before the crash.
    assert csv_steps(client, done.result_files[0]) == list(range(1, total + 1))
    assert done.model_extra["validation"]["tokens"] * 2 == done.trained_tokens


def test_a_follower_stopped_gracefully_requeues_the_job_after_a_checkpoint(client, cluster):
    cluster.start_worker("node-a")
    cluster.start_worker("node-b")
    wait_until(lambda: len(_workers(cluster)) == 2, 60, "two hosts registered")
    job = _create(client, epochs=3)
    total = 3 * -(-PIRATE_EXAMPLES // 4)
    leader, follower = _gang(cluster, job.id)
    wait_until(
        lambda: any(m.startswith("Step ") for m in messages(client, job.id)), 120, "training steps"
    )
    cluster.signal(follower, signal.SIGTERM)
    # The follower waits for the leader's checkpoint, then stops cleanly.
    assert cluster.wait(follower, timeout=120) == 0, cluster.log(follower, 200)
    events = messages(client, job.id)
    requeued = [m for m in events if m.startswith(f"Host {follower}@")]
    assert requeued and "re-queued after a checkpoint at step" in requeued[0], events
    saved = int(requeued[0].rsplit(" ", 1)[1])
    assert 0 < saved < total
    assert client.fine_tuning.jobs.retrieve(job.id).status == "queued"
    wait_until(lambda: not rank_pids(cluster.procs[leader].pid), 60, "the leader's ranks to end")

    cluster.start_worker("node-c")
    done = succeeded(client, cluster, job.id)
    events = messages(client, job.id)
    assert f"Resumed from step {saved}" in events, events
    assert not any(m.startswith("Transient error") for m in events), events  # not a lost host
    assert csv_steps(client, done.result_files[0]) == list(range(1, total + 1))
