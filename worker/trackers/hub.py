"""One background thread per job that carries every tracker call, behind a bounded queue.

The training thread only enqueues (never blocks: when the queue is full the newest metrics
are dropped and counted). Each call is retried a few times with a short backoff; a tracker
whose call still fails is given up on for the rest of the job, and ``on_unreachable`` is told
once (the worker turns it into a warning event on the job).
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from worker.trackers.base import Outcome, RunInfo, Tracker

log = logging.getLogger(__name__)

QUEUE_SIZE = 1000
ATTEMPTS = 3
BACKOFF_SECONDS = 0.5  # then 1 s: a call gives up after about 1.5 s of waiting


@dataclass(frozen=True)
class _Call:
    method: str  # "start", "log_metrics" or "finish"
    args: tuple[Any, ...]


class TrackerHub:
    """Feeds ``trackers`` from a queue on a daemon thread; see the module docstring."""

    def __init__(
        self,
        job_id: str,
        trackers: Sequence[Tracker],
        on_unreachable: Callable[[str, str], None],
        *,
        queue_size: int = QUEUE_SIZE,
        attempts: int = ATTEMPTS,
        backoff_seconds: float = BACKOFF_SECONDS,
    ) -> None:
        self.job_id = job_id
        self.trackers = list(trackers)
        self.on_unreachable = on_unreachable
        self.attempts = attempts
        self.backoff_seconds = backoff_seconds
        self.down: dict[str, str] = {}  # tracker label -> the error it was given up on
        self.dropped = 0
        self._queue: queue.Queue[_Call | None] = queue.Queue(maxsize=queue_size)
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"trackers-{job_id}", daemon=True)

    def start(self, run: RunInfo) -> None:
        self._thread.start()
        self._put(_Call("start", (run,)))

    def log_metrics(self, step: int, metrics: dict[str, float]) -> None:
        self._put(_Call("log_metrics", (step, metrics)))

    def close(self, outcome: Outcome, timeout: float = 30.0) -> bool:
        """Send the outcome, then wait up to ``timeout`` seconds for the queue to drain;
        False if it did not (the thread is a daemon: it never holds the worker)."""
        self._put(_Call("finish", (outcome,)), wait=timeout / 2)
        self._put(None, wait=timeout / 2)
        self._closing.set()  # no more backoff waits: what is left gets one try each
        self._thread.join(timeout)
        if self.dropped:
            log.warning("job %s: %d tracker calls dropped (queue full)", self.job_id, self.dropped)
        return not self._thread.is_alive()

    def _put(self, call: _Call | None, wait: float = 0.0) -> None:
        try:
            if wait:
                self._queue.put(call, timeout=wait)
            else:
                self._queue.put_nowait(call)
        except queue.Full:
            self.dropped += 1

    def _run(self) -> None:
        while True:
            call = self._queue.get()
            if call is None:
                return
            for tracker in self.trackers:
                if tracker.label not in self.down:
                    self._call(tracker, call)

    def _call(self, tracker: Tracker, call: _Call) -> None:
        error: Exception | None = None
        tries = 1 if self._closing.is_set() else self.attempts
        for attempt in range(tries):
            try:
                getattr(tracker, call.method)(*call.args)
                return
            except Exception as exc:  # any failure of a tracker is the tracker's, not the job's
                error = exc
                log.info(
                    "job %s: %s %s failed (attempt %d): %s",
                    self.job_id,
                    tracker.label,
                    call.method,
                    attempt + 1,
                    exc,
                )
                if attempt + 1 < tries and self._closing.wait(self.backoff_seconds * 2**attempt):
                    break
        self.down[tracker.label] = _short(error)
        log.warning("job %s: giving up on %s: %s", self.job_id, tracker.label, error)
        try:
            self.on_unreachable(tracker.label, _short(error))
        except Exception:
            log.exception("job %s: could not report %s as unreachable", self.job_id, tracker.label)


def _short(error: BaseException | None, limit: int = 300) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"
