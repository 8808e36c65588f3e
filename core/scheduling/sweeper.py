"""The periodic scheduler: re-queues jobs whose worker vanished (and frees the hosts booked for
them), and re-publishes queued jobs whose message a broker lost. A ``validating_files`` job is
sent again only while no validator holds a live lease on it (core.scheduling.validation): a
slow validation is not a lost message. Every step is an idempotent conditional update, so
running two schedulers at once does no harm."""

from __future__ import annotations

import logging
import threading

from core.db.engine import session_scope
from core.jobs import lifecycle as jobs
from core.scheduling import gangs
from core.scheduling.wakeups import commit_and_publish
from core.settings import Settings

log = logging.getLogger(__name__)


def sweep(settings: Settings) -> dict[str, list[str]]:
    """One pass. Returns what it re-queued and re-published."""
    with session_scope(settings.database_url) as session:
        requeued = jobs.requeue_expired_leases(session, settings.max_job_retries)
        # Hosts booked for an attempt that is over (its leader was lost) are free again.
        gangs.release_stale(session)
    with session_scope(settings.database_url) as session:
        to_publish = jobs.jobs_to_publish(session, settings.republish_after_seconds)
        published = commit_and_publish(session, settings, to_publish)
    if requeued or published:
        log.info("sweep: re-queued %s, published %s", requeued, published)
    return {"requeued": requeued, "published": published}


def run_forever(settings: Settings, stop: threading.Event) -> None:
    interval = settings.sweep_interval_seconds
    log.info("scheduler started (every %.0f s)", interval)
    while not stop.is_set():
        try:
            sweep(settings)
        except Exception:  # database briefly down: keep going
            log.exception("sweep failed")
        stop.wait(interval)
