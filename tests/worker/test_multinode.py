"""One job over several hosts at the engine's level: two launchers (each a "host" with one
gloo rank, here threads of one process) that meet at node 0's address train exactly as one
launcher with two ranks; a host that never comes, or a lost one, ends the run promptly instead
of hanging for the process group's timeout."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from tests.worker.helpers import RecordingReporter, assert_same_adapter
from tests.worker.test_distributed import SPEC
from worker.failures import TRANSIENT_CODES, classify
from worker.training.distributed import (
    MultiNode,
    SilentReporter,
    free_port,
    peer_lost,
    train_data_parallel,
)
from worker.training.spec import TrainingProcessLost


def test_two_hosts_train_as_two_ranks_of_one_host(
    tiny_model_dir: Path, small_chat_file: Path, tmp_path: Path
) -> None:
    one_host = train_data_parallel(
        2, SPEC, tiny_model_dir, small_chat_file, tmp_path / "one", RecordingReporter(),
        backend="gloo",
    )  # fmt: skip
    port = free_port("")
    follower_error: list[BaseException] = []

    def follower() -> None:
        try:
            train_data_parallel(
                1, SPEC, tiny_model_dir, small_chat_file, tmp_path / "node1", SilentReporter(),
                backend="gloo", multinode=MultiNode(1, 2, "127.0.0.1", port),
            )  # fmt: skip
        except BaseException as exc:  # reported below
            follower_error.append(exc)

    thread = threading.Thread(target=follower)
    thread.start()
    reporter = RecordingReporter()
    two_hosts = train_data_parallel(
        1, SPEC, tiny_model_dir, small_chat_file, tmp_path / "node0", reporter,
        backend="gloo", multinode=MultiNode(0, 2, "127.0.0.1", port),
    )  # fmt: skip
    thread.join(timeout=120)
    assert not follower_error, follower_error
    assert (two_hosts.steps, two_hosts.trained_tokens) == (
        one_host.steps,
        one_host.trained_tokens,
    )
    assert two_hosts.final_train_loss == pytest.approx(one_host.final_train_loss, rel=1e-6)
    # The same ranks on the same data: the same numbers.
    assert_same_adapter(one_host.adapter_dir, two_hosts.adapter_dir, rtol=1e-5, atol=1e-6)
    # Only node 0 (global rank 0) reported and saved.
    assert reporter.metrics_calls and not (tmp_path / "node1").exists()


def test_a_host_that_never_joins_ends_the_run_promptly(
    tiny_model_dir: Path, small_chat_file: Path, tmp_path: Path
) -> None:
    calls: list[float] = []

    def watchdog() -> str | None:
        calls.append(time.monotonic())
        return "host node-b did not join the job in time" if len(calls) >= 2 else None

    began = time.monotonic()
    with pytest.raises(TrainingProcessLost, match="node-b did not join") as info:
        train_data_parallel(
            1, SPEC, tiny_model_dir, small_chat_file, tmp_path / "alone", RecordingReporter(),
            backend="gloo", timeout_seconds=600,
            multinode=MultiNode(0, 2, "127.0.0.1", free_port("")),
            watchdog=watchdog, watch_seconds=0.5,
        )  # fmt: skip
    assert len(calls) == 2
    assert time.monotonic() - began < 30  # not the process group's 600 s
    code, message, _ = classify(info.value)
    assert code in TRANSIENT_CODES and "node-b did not join" in message


def test_a_collective_that_lost_its_peer_reads_as_a_lost_host() -> None:
    gloo = RuntimeError(
        "[../third_party/gloo/gloo/transport/tcp/pair.cc:553] Connection closed by peer "
        "[127.0.0.1]:48269"
    )
    assert peer_lost(gloo)
    assert not peer_lost(RuntimeError("DefaultCPUAllocator: can't allocate memory"))
    assert not peer_lost(ValueError("no example with trainable tokens"))


def test_a_node_rank_outside_the_gang_is_refused() -> None:
    with pytest.raises(ValueError, match="node_rank 2 outside 0..1"):
        MultiNode(2, 2, "127.0.0.1", 29500)
