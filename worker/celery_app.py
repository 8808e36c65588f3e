"""The worker's Celery app: ``celery -A worker.celery_app:app worker``."""

from __future__ import annotations

from celery import Celery
from celery.signals import setup_logging

from core.logconfig import configure_logging
from core.queue import celery_config
from core.settings import load_settings

app = Celery("dorado-worker", include=["worker.tasks"])
app.conf.update(celery_config(load_settings()))


@setup_logging.connect
def _logging(**_kwargs) -> None:
    configure_logging()
