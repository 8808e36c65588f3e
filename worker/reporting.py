"""The engine's Reporter, backed by the database: events, lease, cancel checks, ETA.

Each write is its own short transaction fenced by the job's attempt, so the worker holds no
connection while it trains and a worker that lost its job cannot write into it.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import timedelta

from core import jobs
from core.db import session_scope
from core.settings import Settings
from core.timeutil import utcnow

log = logging.getLogger(__name__)

MAX_METRIC_EVENTS = 100


class JobReporter:
    """Implements ``worker.training.spec.Reporter`` for one claimed job."""

    def __init__(self, settings: Settings, job_id: str, attempt: int):
        self.settings = settings
        self.job_id = job_id
        self.attempt = attempt
        self.metrics_rows: list[dict[str, float | int | None]] = []
        self._lost = threading.Event()
        self._stop_heartbeat = threading.Event()
        self._started = time.monotonic()
        self._estimated_finish = None
        self._heartbeat = threading.Thread(target=self._beat, name=f"lease-{job_id}", daemon=True)

    # --- lease ---------------------------------------------------------------------------
    def start(self) -> None:
        self._heartbeat.start()

    def close(self) -> None:
        self._stop_heartbeat.set()
        self._heartbeat.join(timeout=10)

    def _beat(self) -> None:
        interval = max(1.0, self.settings.lease_seconds / 4)
        while not self._stop_heartbeat.wait(interval):
            try:
                with session_scope(self.settings.database_url) as session:
                    ours = jobs.renew_lease(
                        session,
                        self.job_id,
                        self.attempt,
                        self.settings.lease_seconds,
                        self._estimated_finish,
                    )
                if not ours:
                    log.info("job %s: no longer ours (cancelled or re-assigned)", self.job_id)
                    self._lost.set()
                    return
            except Exception:  # a short database outage must not kill the training
                log.warning("job %s: lease renewal failed; will retry", self.job_id, exc_info=True)

    # --- Reporter protocol ---------------------------------------------------------------
    def should_stop(self) -> bool:
        return self._lost.is_set()

    def message(self, text: str, level: str = "info") -> None:
        log.info("job %s: %s", self.job_id, text)
        self._write(text, level=level)

    def metrics(
        self, step: int, total_steps: int, train_loss: float, train_mean_token_accuracy: float
    ) -> None:
        row = {
            "step": step,
            "train_loss": train_loss,
            "train_accuracy": train_mean_token_accuracy,
            "valid_loss": None,
            "valid_mean_token_accuracy": None,
        }
        self.metrics_rows.append(row)
        elapsed = time.monotonic() - self._started
        if step:
            remaining = elapsed / step * (total_steps - step)
            self._estimated_finish = utcnow() + timedelta(seconds=remaining)
        every = max(1, total_steps // MAX_METRIC_EVENTS)
        if step % every and step not in (1, total_steps):
            return
        data = {
            "step": step,
            "total_steps": total_steps,
            "train_loss": train_loss,
            "train_mean_token_accuracy": train_mean_token_accuracy,
            "valid_loss": None,
            "valid_mean_token_accuracy": None,
            "full_valid_loss": None,
            "full_valid_mean_token_accuracy": None,
        }
        self._write(
            f"Step {step}/{total_steps}: training loss={train_loss:.4f}", type="metrics", data=data
        )

    def _write(
        self, text: str, *, level: str = "info", type: str = "message", data: dict | None = None
    ) -> None:
        try:
            with session_scope(self.settings.database_url) as session:
                if not jobs.record_event(
                    session, self.job_id, self.attempt, text, level=level, type=type, data=data
                ):
                    self._lost.set()
        except Exception:
            log.warning("job %s: could not record event %r", self.job_id, text, exc_info=True)
