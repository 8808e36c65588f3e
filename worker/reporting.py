"""The engine's Reporter, backed by the database and the object store: events, lease,
cancel/pause checks, checkpoints, ETA.

Each write is its own short transaction fenced by the job's attempt, so the worker holds no
connection while it trains and a worker that lost its job cannot write into it.
"""

from __future__ import annotations

import json
import logging
import tempfile
import threading
import time
from collections.abc import Mapping
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from core.db.engine import session_scope
from core.jobs import checkpoints, progress
from core.jobs import lifecycle as jobs
from core.settings import Settings
from core.storage import quota
from core.storage.objects import ObjectStore, delete_prefix, upload_dir
from core.timeutil import utcnow
from worker import artifacts, shutdown
from worker.eta import FinishEstimator

log = logging.getLogger(__name__)

MAX_METRIC_EVENTS = 100
CONTROL_POLL_SECONDS = 1.0
METRICS_HISTORY_FILE = "dorado_metrics.json"
DPO_SUFFIXES = ("_chosen_reward", "_rejected_reward", "_reward_margin", "_preference_accuracy")
METRIC_KEYS = (
    "valid_loss",
    "valid_mean_token_accuracy",
    "full_valid_loss",
    "full_valid_mean_token_accuracy",
)


class JobReporter:
    """Implements ``worker.training.spec.Reporter`` for one claimed job."""

    def __init__(
        self,
        settings: Settings,
        store: ObjectStore,
        job_id: str,
        attempt: int,
        history: list[dict[str, Any]] | None = None,
        deadline: datetime | None = None,
    ):
        self.settings = settings
        self.store = store
        self.job_id = job_id
        self.attempt = attempt
        # One row per optimizer step over the whole job (restored on resume): the metrics CSV.
        self.metrics_rows: list[dict[str, Any]] = list(history or [])
        self.checkpoints_saved = 0
        # Wall-clock limit of the whole job (all attempts); past it the job is failed.
        self.deadline = deadline
        self.timed_out = False
        self._lost = threading.Event()
        self._stop_heartbeat = threading.Event()
        self._control = "run"
        self._last_poll = 0.0
        self._eta = FinishEstimator()
        self._estimated_finish: datetime | None = None
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

    # --- control -------------------------------------------------------------------------
    def _poll(self) -> str:
        now = time.monotonic()
        if now - self._last_poll >= CONTROL_POLL_SECONDS:
            self._last_poll = now
            try:
                with session_scope(self.settings.database_url) as session:
                    self._control = jobs.job_control(session, self.job_id, self.attempt)
            except Exception:
                log.warning(
                    "job %s: could not read job state; carrying on", self.job_id, exc_info=True
                )
        return self._control

    def should_stop(self) -> bool:
        if self.deadline is not None and utcnow() >= self.deadline:
            self.timed_out = True
            return True
        return self._lost.is_set() or self._poll() == "stop"

    def should_pause(self) -> bool:
        """A pause the user asked for, or the worker (or a host of its multi-node gang)
        shutting down: checkpoint, then pause or re-queue (:attr:`requeue_wanted`)."""
        if self._lost.is_set():
            return False
        return shutdown.in_progress() or self._poll() in ("pause", "requeue")

    @property
    def requeue_wanted(self) -> bool:
        """Whether a pause at this point means "back to the queue" rather than "paused"."""
        return shutdown.in_progress() or self._control == "requeue"

    # --- events --------------------------------------------------------------------------
    def message(self, text: str, level: str = "info") -> None:
        log.info("job %s: %s", self.job_id, text)
        self._write(text, level=level)

    def metrics(
        self,
        step: int,
        total_steps: int,
        train_loss: float,
        train_mean_token_accuracy: float,
        *,
        valid_loss: float | None = None,
        valid_mean_token_accuracy: float | None = None,
        full_valid_loss: float | None = None,
        full_valid_mean_token_accuracy: float | None = None,
        tokens_per_second: float | None = None,
        extra: Mapping[str, float | None] | None = None,
    ) -> None:
        extra = dict(extra or {})  # DPO's quantities (worker.training.dpo)
        valid = {
            "valid_loss": valid_loss,
            "valid_mean_token_accuracy": valid_mean_token_accuracy,
            "full_valid_loss": full_valid_loss,
            "full_valid_mean_token_accuracy": full_valid_mean_token_accuracy,
        }
        self.metrics_rows = [r for r in self.metrics_rows if r["step"] < step]
        self.metrics_rows.append(
            {
                "step": step,
                "train_loss": train_loss,
                "train_accuracy": train_mean_token_accuracy,
                **valid,
                **extra,
            }
        )
        has_valid = any(v is not None for v in valid.values())
        first_estimate = self._update_eta(step, total_steps, validated=has_valid)
        every = max(1, total_steps // MAX_METRIC_EVENTS)
        if step % every and step not in (1, total_steps) and not has_valid:
            if first_estimate:
                self._write_estimated_finish()
            return
        data = {
            "step": step,
            "total_steps": total_steps,
            "train_loss": train_loss,
            "train_mean_token_accuracy": train_mean_token_accuracy,
            **valid,
            **extra,
            "tokens_per_second": tokens_per_second,
        }
        text = f"Step {step}/{total_steps}: training loss={train_loss:.4f}"
        if extra.get("train_reward_margin") is not None:
            text += f", reward margin={extra['train_reward_margin']:.4f}"
        if valid_loss is not None:
            text += f", validation loss={valid_loss:.4f}"
        # The estimate goes out with the metrics event, so the job's progress and its
        # expected finish move together (and a short job has one before any lease renewal).
        self._write(text, type="metrics", data=data, estimated_finish=self._estimated_finish)

    def _update_eta(self, step: int, total_steps: int, *, validated: bool) -> bool:
        """Refresh the expected finish; True when this is the attempt's first estimate."""
        left = self._eta.step_done(step, total_steps, time.monotonic(), validated=validated)
        if left is None:
            return False
        first = self._estimated_finish is None
        self._estimated_finish = utcnow() + timedelta(seconds=left)
        return first

    def _write_estimated_finish(self) -> None:
        if self._estimated_finish is None:
            return
        try:
            with session_scope(self.settings.database_url) as session:
                progress.record_estimated_finish(
                    session, self.job_id, self.attempt, self._estimated_finish
                )
        except Exception:  # the next metrics event or lease renewal carries it
            log.warning("job %s: could not record the estimate", self.job_id, exc_info=True)

    def _write(
        self,
        text: str,
        *,
        level: str = "info",
        type: str = "message",
        data: dict | None = None,
        estimated_finish: datetime | None = None,
    ) -> None:
        try:
            with session_scope(self.settings.database_url) as session:
                if not jobs.record_event(
                    session, self.job_id, self.attempt, text, level=level, type=type, data=data
                ):
                    self._lost.set()
                elif estimated_finish is not None:
                    progress.record_estimated_finish(
                        session, self.job_id, self.attempt, estimated_finish
                    )
        except Exception:
            log.warning("job %s: could not record event %r", self.job_id, text, exc_info=True)

    # --- checkpoints ---------------------------------------------------------------------
    def save_checkpoint(self, info) -> None:
        """Upload ``info.directory`` and record it; old checkpoints beyond the job's limit go."""
        directory = Path(info.directory)
        (directory / METRICS_HISTORY_FILE).write_text(
            json.dumps([r for r in self.metrics_rows if r["step"] <= info.step])
        )
        prefix = checkpoints.checkpoint_prefix(self.job_id, info.step)
        upload_dir(self.store, prefix, directory)
        adapter_key = artifacts.checkpoint_adapter_key(prefix)
        with tempfile.TemporaryDirectory() as tmp:
            packed = artifacts.pack_adapter(directory, Path(tmp) / "adapter.tar.gz")
            self.store.put_file(adapter_key, packed)
        metrics = {
            "step": info.step,
            **{
                k: info.metrics.get(k)
                for k in ("train_loss", "train_mean_token_accuracy", *METRIC_KEYS)
            },
            # DPO runs: their rewards, margin and preference accuracy (when measured).
            **{k: v for k, v in info.metrics.items() if k.endswith(DPO_SUFFIXES) and v is not None},
        }
        with session_scope(self.settings.database_url) as session:
            row, dropped = checkpoints.record_checkpoint(
                session,
                self.job_id,
                self.attempt,
                step=info.step,
                epoch=info.epoch,
                reason=info.reason,
                metrics=metrics,
                storage_prefix=prefix,
                adapter_key=adapter_key,
            )
            if row is not None:
                jobs.add_event(
                    session,
                    self.job_id,
                    f"Checkpoint saved at step {info.step} (epoch {info.epoch})",
                    data={"checkpoint": row.id, "step": info.step},
                )
        if row is None:
            self._lost.set()
            return
        self.checkpoints_saved += 1
        self._eta.checkpoint_saved(info.step)
        for old in dropped:
            delete_prefix(self.store, old)
        self._record_stored_bytes()

    def _record_stored_bytes(self) -> None:
        """The job's objects count in its organization's storage quota."""
        try:
            with session_scope(self.settings.database_url) as session:
                quota.refresh_job_bytes(session, self.store, self.job_id)
        except Exception:  # the count catches up at the next checkpoint or at the end
            log.warning("job %s: could not record stored bytes", self.job_id, exc_info=True)


def load_history(directory: Path) -> list[dict[str, Any]]:
    path = directory / METRICS_HISTORY_FILE
    return json.loads(path.read_text()) if path.exists() else []
