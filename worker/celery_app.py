"""The worker's Celery app: ``celery -A worker.celery_app:app worker``."""

from __future__ import annotations

from celery import Celery
from celery.signals import setup_logging, worker_shutting_down

from core.logconfig import configure_logging
from core.queue import celery_config
from core.settings import load_settings
from worker import shutdown

app = Celery("dorado-worker", include=["worker.tasks"])
app.conf.update(celery_config(load_settings()))


@setup_logging.connect
def _logging(**_kwargs) -> None:
    configure_logging()


@worker_shutting_down.connect
def _shutting_down(**_kwargs) -> None:
    shutdown.begin()
