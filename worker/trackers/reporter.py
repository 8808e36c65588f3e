"""The engine's Reporter with experiment trackers attached: what the job's
``integrations`` ask for, fed from :class:`worker.reporting.JobReporter`'s metrics."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from core.db.engine import session_scope
from core.db.models import Job
from core.jobs import lifecycle as jobs
from core.settings import Settings
from core.storage.objects import ObjectStore
from core.tenancy import tracker_credentials
from worker.reporting import JobReporter
from worker.trackers.base import Outcome, RunInfo, Tracker
from worker.trackers.hub import TrackerHub
from worker.trackers.mlflow_tracker import MlflowTracker
from worker.trackers.wandb_tracker import WandbTracker, run_dir

log = logging.getLogger(__name__)


class TrackingReporter(JobReporter):
    """A :class:`JobReporter` that also sends each metrics step to the job's trackers (through
    the hub: never blocking the training) and the outcome when the job's attempt ends."""

    def __init__(self, *args: Any, hub: TrackerHub, run: RunInfo, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.hub = hub
        self.run = run

    def start(self) -> None:
        super().start()
        self.hub.start(self.run)

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
        named = {
            "valid_loss": valid_loss,
            "valid_mean_token_accuracy": valid_mean_token_accuracy,
            "full_valid_loss": full_valid_loss,
            "full_valid_mean_token_accuracy": full_valid_mean_token_accuracy,
            "tokens_per_second": tokens_per_second,
        }
        super().metrics(
            step, total_steps, train_loss, train_mean_token_accuracy, **named, extra=extra
        )
        values = {
            "train_loss": train_loss,
            "train_mean_token_accuracy": train_mean_token_accuracy,
            **named,
            **(extra or {}),  # DPO's quantities go to the trackers too
        }
        self.hub.log_metrics(step, {k: v for k, v in values.items() if v is not None})

    def close(self) -> None:
        super().close()
        try:
            outcome = job_outcome(self.settings, self.job_id)
        except Exception:  # the database briefly down: the run still ends, status unknown
            log.warning("job %s: could not read its outcome for the trackers", self.job_id)
            outcome = Outcome(status="unknown")
        self.hub.close(outcome)


def job_reporter(
    settings: Settings,
    store: ObjectStore,
    job_id: str,
    attempt: int,
    *,
    deadline: datetime | None = None,
) -> JobReporter:
    """The job's Reporter: a :class:`TrackingReporter` when it has integrations."""
    with session_scope(settings.database_url) as session:
        job = session.get(Job, job_id)
        integrations = list(job.integrations or []) if job else []
        run = run_info(job) if job else None
        org_id = job.organization_id if job else ""
    if not integrations or run is None:
        return JobReporter(settings, store, job_id, attempt, deadline=deadline)
    hub = TrackerHub(
        job_id, build_trackers(settings, job_id, org_id, integrations), warn(settings, job_id)
    )
    return TrackingReporter(settings, store, job_id, attempt, deadline=deadline, hub=hub, run=run)


def build_trackers(
    settings: Settings, job_id: str, org_id: str, integrations: list[dict[str, Any]]
) -> list[Tracker]:
    """One tracker per integration the worker can serve; the others are reported on the job."""
    trackers: list[Tracker] = []
    for item in integrations:
        if item["type"] == "mlflow":
            if not settings.mlflow_tracking_uri:
                warn(settings, job_id)(
                    "MLflow", "DORADO_MLFLOW_TRACKING_URI is not set on the worker"
                )
                continue
            options = item["mlflow"]
            trackers.append(
                MlflowTracker(
                    settings.mlflow_tracking_uri, options["experiment"], options.get("run_name")
                )
            )
        elif item["type"] == "wandb":
            api_key = _wandb_key(settings, org_id)
            if api_key is None:
                warn(settings, job_id)(
                    "Weights & Biases", "the organization's API key is missing or unreadable"
                )
                continue
            trackers.append(WandbTracker(item["wandb"], api_key, run_dir(settings.home / "wandb")))
    return trackers


def _wandb_key(settings: Settings, org_id: str) -> str | None:
    try:
        with session_scope(settings.database_url) as session:
            box = tracker_credentials.credentials_box(settings)
            return tracker_credentials.wandb_api_key(session, box, org_id)
    except Exception:  # sealed under another platform secret: the worker cannot read it
        log.warning("organization %s: could not read its W&B API key", org_id, exc_info=True)
        return None


def warn(settings: Settings, job_id: str):
    """A callback writing "<tracker> unreachable" as a warning (``warn``) event on the job."""

    def unreachable(label: str, error: str) -> None:
        with session_scope(settings.database_url) as session:
            jobs.add_event(
                session,
                job_id,
                f"{label} was unreachable; the run is not logged there any more ({error}). "
                "Training goes on unaffected.",
                level="warn",
                data={"tracker": label, "error": error},
            )

    return unreachable


def run_info(job: Job) -> RunInfo:
    params = {
        "model": job.model,
        "training_file": job.training_file,
        "validation_file": job.validation_file,
        "seed": job.seed,
        "suffix": job.suffix,
        "hyperparameters": job.hyperparameters,
        "adapter": job.adapter,
    }
    return RunInfo(
        job_id=job.id,
        name=job.suffix or job.id,
        params=params,
        tags={"dorado.model": job.model},
    )


def job_outcome(settings: Settings, job_id: str) -> Outcome:
    """The job's status as the attempt left it; the adapter's location once it succeeded."""
    with session_scope(settings.database_url) as session:
        job = session.get(Job, job_id)
        if job is None:
            return Outcome(status="unknown")
        uri = None
        if job.status == "succeeded" and job.adapter_key:
            uri = f"{settings.storage_url.rstrip('/')}/{job.adapter_key}"
        return Outcome(
            status=str(job.status),
            fine_tuned_model=job.fine_tuned_model,
            adapter_uri=uri,
            trained_tokens=job.trained_tokens,
        )
