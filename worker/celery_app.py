"""The worker's Celery app: ``celery -A worker.celery_app:app worker``."""

from __future__ import annotations

from celery import Celery
from celery.signals import (
    celeryd_after_setup,
    setup_logging,
    worker_init,
    worker_ready,
    worker_shutdown,
    worker_shutting_down,
)

from core.db.engine import check_database
from core.errors import ConfigurationError
from core.observability.logconfig import configure_logging
from core.scheduling.broker import celery_config
from core.settings import Settings, load_settings
from worker import registry, shutdown
from worker.startup import prepare_worker_process

# Before any task imports transformers or peft (they read the offline switches on import).
prepare_worker_process()


def _settings_or_exit() -> Settings:
    # A setting that cannot work stops the worker with its one-line message, no traceback.
    try:
        return load_settings()
    except ConfigurationError as exc:
        raise SystemExit(f"dorado worker: {exc}") from None


app = Celery("dorado-worker", include=["worker.tasks"])
app.conf.update(celery_config(_settings_or_exit()))


@worker_init.connect
def _check_database(**_kwargs) -> None:
    try:
        check_database(load_settings().database_url)
    except ConfigurationError as exc:
        raise SystemExit(f"dorado worker: {exc}") from None


@setup_logging.connect
def _logging(**_kwargs) -> None:
    configure_logging()


@worker_shutting_down.connect
def _shutting_down(**_kwargs) -> None:
    shutdown.begin()


@celeryd_after_setup.connect
def _pool_queue(sender, instance, **_kwargs) -> None:
    registry.setup(sender, instance)


@worker_ready.connect
def _register(**_kwargs) -> None:
    registry.start(app)


@worker_shutdown.connect
def _stopped(**_kwargs) -> None:
    registry.stop()
