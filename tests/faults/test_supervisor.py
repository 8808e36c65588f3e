"""``dorado run``'s supervisor with real child processes: a dead child is restarted after a
growing backoff with a log line, a crash loop stops everything with a clear reason."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time

import pytest

from cli.supervisor import CrashLoop, RestartPolicy, Supervisor, describe_exit

FAST = RestartPolicy(first_delay=0.1, max_delay=0.4, crash_loop_deaths=3, crash_loop_window=30)
SLEEPER = [sys.executable, "-c", "import time; time.sleep(60)"]
CRASHER = [sys.executable, "-c", "import sys; sys.exit(3)"]


def watch_until(supervisor: Supervisor, predicate, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        supervisor.check()
        if predicate():
            return
        time.sleep(0.02)
    raise TimeoutError("the supervisor did not get there in time")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_backoff_doubles_up_to_the_cap() -> None:
    policy = RestartPolicy(first_delay=1, max_delay=30)
    assert [policy.delay(n) for n in range(1, 8)] == [1, 2, 4, 8, 16, 30, 30]


def test_exit_descriptions_name_the_signal() -> None:
    assert describe_exit(-signal.SIGKILL) == "was killed by SIGKILL"
    assert describe_exit(3) == "exited with code 3"


def test_a_killed_child_is_restarted_and_the_others_keep_running(caplog) -> None:
    supervisor = Supervisor(FAST)
    supervisor.start("worker", SLEEPER, dict(os.environ))
    supervisor.start("api", SLEEPER, dict(os.environ))
    api, first = supervisor.pid("api"), supervisor.pid("worker")
    try:
        with caplog.at_level(logging.WARNING, logger="dorado"):
            os.kill(first, signal.SIGKILL)
            watch_until(supervisor, lambda: supervisor.pid("worker") is None)
            died_at = time.monotonic()
            watch_until(supervisor, lambda: supervisor.pid("worker") is not None)
            assert time.monotonic() - died_at >= FAST.first_delay * 0.9  # after the backoff
        second = supervisor.pid("worker")
        assert second != first and alive(second)
        assert supervisor.pid("api") == api and alive(api)
        lines = [r.getMessage() for r in caplog.records]
        assert "worker was killed by SIGKILL; restarting it in 0.1 s" in lines[0]
        assert lines[1] == "restarting worker"

        # A second death soon after waits twice as long.
        os.kill(second, signal.SIGKILL)
        watch_until(supervisor, lambda: supervisor.pid("worker") is None)
        assert "restarting it in 0.2 s (2 of 3 deaths" in caplog.records[-1].getMessage()
    finally:
        supervisor.stop_all(grace=5)
    assert not alive(api)


def test_a_crash_loop_gives_up_and_stop_all_ends_the_others(caplog) -> None:
    supervisor = Supervisor(FAST)
    supervisor.start("api", SLEEPER, dict(os.environ))
    supervisor.start("inference", CRASHER, dict(os.environ))
    api = supervisor.pid("api")
    stopping = threading.Event()
    with pytest.raises(CrashLoop, match=r"inference exited with code 3; it died 3 times in 30 s"):
        supervisor.run(stopping, interval=0.02)
    supervisor.stop_all(grace=5)
    assert not alive(api)
    restarts = [r for r in caplog.records if r.getMessage() == "restarting inference"]
    assert len(restarts) == 2  # three deaths: the first two were restarted


def test_deaths_outside_the_window_are_forgotten() -> None:
    now = [0.0]
    policy = RestartPolicy(first_delay=1, max_delay=4, crash_loop_deaths=2, crash_loop_window=10)
    supervisor = Supervisor(policy, clock=lambda: now[0])
    supervisor.start("worker", CRASHER, dict(os.environ))
    try:
        for _ in range(4):  # one death every 20 s never makes a loop of 2 deaths in 10 s
            watch_until(supervisor, lambda: supervisor.pid("worker") is None)
            now[0] += 20
            watch_until(supervisor, lambda: supervisor.pid("worker") is not None)
    finally:
        supervisor.stop_all(grace=5)
