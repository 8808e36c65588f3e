"""Keep ``dorado run``'s children alive: restart one that dies, give up on a crash loop.

A training worker killed by the kernel's OOM killer (or anything else) must cost a few
training steps, not the platform: the child is started again after a backoff (1 s, 2 s, 4 s,
... up to 30 s), and its job resumes from its last checkpoint once the scheduler notices the
lost lease. A child that dies ``crash_loop_deaths`` times within ``crash_loop_window`` seconds
is not going to get better by itself (a bad setting, a port taken, a broken install): the
supervisor then stops every child and reports which one looped.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

log = logging.getLogger("dorado")


@dataclass(frozen=True)
class RestartPolicy:
    """How quickly a dead child is restarted, and when restarting stops making sense."""

    first_delay: float = 1.0
    max_delay: float = 30.0
    crash_loop_deaths: int = 5
    crash_loop_window: float = 60.0

    def delay(self, recent_deaths: int) -> float:
        """Seconds to wait before the restart that follows the ``recent_deaths``-th death."""
        return min(self.max_delay, self.first_delay * 2 ** max(recent_deaths - 1, 0))


class CrashLoop(RuntimeError):
    """A child died too often too quickly; the platform was stopped."""


def describe_exit(returncode: int) -> str:
    """``exited with code 3`` or ``was killed by SIGKILL``, for log lines."""
    if returncode < 0:
        try:
            return f"was killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"was killed by signal {-returncode}"
    return f"exited with code {returncode}"


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    # Children live in their own session (so Ctrl-C reaches only the launcher, which then
    # stops each child exactly once); PR_SET_PDEATHSIG stops them if the launcher is killed.
    os.setsid()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def spawn(command: list[str], env: dict[str, str]) -> subprocess.Popen:
    """Start one child in its own session, stopped with the launcher."""
    return subprocess.Popen(command, env=env, preexec_fn=_die_with_parent)


@dataclass
class _Child:
    name: str
    command: list[str]
    env: dict[str, str]
    proc: subprocess.Popen | None = None
    deaths: deque[float] = field(default_factory=deque)
    restart_at: float | None = None


class Supervisor:
    """Named children started, watched and restarted from the launcher's main thread.

    Everything runs in one thread on purpose: PR_SET_PDEATHSIG fires when the *thread* that
    started a child ends, so a restarted child must come from the same thread as the others.
    """

    def __init__(
        self,
        policy: RestartPolicy | None = None,
        *,
        spawner: Callable[[list[str], dict[str, str]], subprocess.Popen] = spawn,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.policy = policy or RestartPolicy()
        self._spawn = spawner
        self._clock = clock
        self._children: dict[str, _Child] = {}

    def start(self, name: str, command: list[str], env: dict[str, str]) -> None:
        """Start ``command`` as the child ``name``."""
        child = _Child(name, command, env)
        child.proc = self._spawn(command, env)
        self._children[name] = child

    def pid(self, name: str) -> int | None:
        """The process id of child ``name`` now (None while it waits to be restarted)."""
        proc = self._children[name].proc
        return proc.pid if proc is not None else None

    def check(self) -> None:
        """Notice dead children and restart those whose backoff has passed.

        Raises CrashLoop (after logging why) when a child died too often too quickly; the
        caller then stops the others with :meth:`stop_all`.
        """
        now = self._clock()
        for child in self._children.values():
            if child.proc is not None and child.proc.poll() is not None:
                self._died(child, now)
            if child.restart_at is not None and now >= child.restart_at:
                child.restart_at = None
                log.warning("restarting %s", child.name)
                child.proc = self._spawn(child.command, child.env)

    def _died(self, child: _Child, now: float) -> None:
        assert child.proc is not None
        how = describe_exit(child.proc.returncode)
        child.proc = None
        child.deaths.append(now)
        while child.deaths and now - child.deaths[0] > self.policy.crash_loop_window:
            child.deaths.popleft()
        recent = len(child.deaths)
        window = self.policy.crash_loop_window
        if recent >= self.policy.crash_loop_deaths:
            message = (
                f"{child.name} {how}; it died {recent} times in {window:.0f} s, "
                "which looks like a crash loop: stopping the platform (see its output above)"
            )
            log.error(message)
            raise CrashLoop(message)
        delay = self.policy.delay(recent)
        child.restart_at = now + delay
        log.error(
            "%s %s; restarting it in %.1f s (%d of %d deaths in %.0f s stop the platform)",
            child.name,
            how,
            delay,
            recent,
            self.policy.crash_loop_deaths,
            window,
        )

    def run(self, stopping: threading.Event, interval: float = 0.5) -> None:
        """Watch the children until ``stopping`` is set (or a crash loop raises)."""
        while not stopping.is_set():
            self.check()
            stopping.wait(interval)

    def stop_all(self, grace: float = 60.0) -> None:
        """Stop every running child gracefully (the worker checkpoints its job), then force."""
        running = {c.name: c.proc for c in self._children.values() if c.proc is not None}
        for child in self._children.values():
            child.restart_at = None
        for proc in running.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = self._clock() + grace
        for name, proc in running.items():
            try:
                proc.wait(timeout=max(0.1, deadline - self._clock()))
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop in %.0f s; killing it", name, grace)
                proc.kill()
                proc.wait()
