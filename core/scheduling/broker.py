"""Celery client side: configuration shared with the worker, and publishing by task name.

The API never imports the worker: it sends ``dorado.run_job`` by name. Messages are only a
nudge; the database holds the truth, and the sweeper re-publishes what a broker lost.
"""

from __future__ import annotations

import logging
from functools import lru_cache
from typing import Any

from celery import Celery

from core.jobs.status import JobStatus
from core.settings import Settings

log = logging.getLogger(__name__)

RUN_JOB_TASK = "dorado.run_job"
VALIDATE_JOB_TASK = "dorado.validate_job"
JOBS_QUEUE = "dorado.jobs"
DEFAULT_POOL = "default"
# Validation (tokenizing the files) is quick and must not wait behind hours of training:
# its own queue, served by a small CPU worker (see cli.main.validator_command).
VALIDATE_QUEUE = "dorado.validate"


def celery_config(settings: Settings) -> dict[str, Any]:
    """Celery settings for both publisher and worker."""
    config: dict[str, Any] = {
        "broker_url": settings.broker_url,
        "task_ignore_result": True,
        "result_backend": None,
        # Training tasks are long: take one at a time and ack only when done, so a task whose
        # worker is stopped gracefully goes back to the queue.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_default_queue": JOBS_QUEUE,
        "task_routes": {
            RUN_JOB_TASK: {"queue": JOBS_QUEUE},
            VALIDATE_JOB_TASK: {"queue": VALIDATE_QUEUE},
        },
        "broker_connection_retry_on_startup": True,
        "worker_hijack_root_logger": False,
    }
    if settings.uses_filesystem_broker:
        folder = settings.broker_folder
        queue_dir, control_dir = folder / "queue", folder / "control"
        for path in (queue_dir, control_dir):
            path.mkdir(parents=True, exist_ok=True)
        config["broker_transport_options"] = {
            "data_folder_in": str(queue_dir),
            "data_folder_out": str(queue_dir),
            # Must be absolute: the default "./control" breaks control between processes.
            "control_folder": str(control_dir),
            "store_processed": False,
            "polling_interval": 0.2,
        }
    return config


@lru_cache(maxsize=4)
def _client(settings: Settings) -> Celery:
    app = Celery("dorado-client")
    app.conf.update(celery_config(settings))
    return app


def jobs_queue(pool: str | None) -> str:
    """The queue the training workers of ``pool`` consume: ``dorado.jobs`` for the default
    pool, ``dorado.jobs.<pool>`` for any other."""
    return JOBS_QUEUE if pool in (None, "", DEFAULT_POOL) else f"{JOBS_QUEUE}.{pool}"


def publish_job(settings: Settings, job_id: str, pool: str | None = None) -> None:
    """Wake a training worker of ``pool`` for the job. Call only after the job row is committed.

    The message is a wake-up: the worker claims the best eligible job of its pool (see
    core.scheduling.dispatch), which is not necessarily this one."""
    _client(settings).send_task(RUN_JOB_TASK, args=[job_id], queue=jobs_queue(pool))
    log.info("published job %s to %s", job_id, jobs_queue(pool))


def publish_to_host(settings: Settings, job_id: str, queue: str) -> None:
    """Wake one training worker through its own queue (core.scheduling.gangs.host_queue): it
    was booked into the gang of a multi-node job."""
    _client(settings).send_task(RUN_JOB_TASK, args=[job_id], queue=queue)
    log.info("published job %s to %s", job_id, queue)


def publish_validation(settings: Settings, job_id: str) -> None:
    """Send a ``validating_files`` job to the validators. Call only after commit."""
    _client(settings).send_task(VALIDATE_JOB_TASK, args=[job_id], queue=VALIDATE_QUEUE)
    log.info("published validation of job %s", job_id)


def publish_for_status(
    settings: Settings, job_id: str, status: str, pool: str | None = None
) -> None:
    """The message a job in ``status`` (assigned to ``pool``) waits for."""
    if status == JobStatus.VALIDATING_FILES:
        publish_validation(settings, job_id)
    else:
        publish_job(settings, job_id, pool)
