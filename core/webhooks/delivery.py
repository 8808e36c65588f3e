"""The delivery loop: claims due deliveries from the database, posts them on a thread pool
(a slow or hanging receiver holds one slot, never the loop) and records each outcome.

At least once: a claim moves the delivery's ``next_attempt_at`` one lease ahead before the
request is made, so if this process dies mid-request the delivery becomes due again when the
lease runs out and is sent again, with the same ``webhook-id``. Failures are retried with
exponential backoff and jitter until ``max_attempts``; then the delivery is ``failed``.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from core.db.engine import session_scope
from core.db.models import WebhookDelivery, WebhookEndpoint, WebhookEvent
from core.errors import InvalidRequest
from core.settings import Settings
from core.timeutil import utcnow
from core.webhooks import transport
from core.webhooks.config import WebhookConfig, webhook_config
from core.webhooks.endpoints import secret_box
from core.webhooks.events import payload
from core.webhooks.signing import SecretBox, signed_headers
from core.webhooks.urls import check_url
from core.webhooks.wakeup import Wakeup

log = logging.getLogger(__name__)


def backoff_seconds(
    attempt: int, config: WebhookConfig, rng: Callable[[], float] = random.random
) -> float:
    """Wait after failed attempt ``attempt`` (1-based): base * 2**(attempt-1), capped, then
    jittered down by up to half so that endpoints failing together do not retry together."""
    ceiling = min(config.retry_base_seconds * 2 ** (attempt - 1), config.retry_max_seconds)
    return ceiling * (0.5 + rng() / 2)


def lease_seconds(config: WebhookConfig) -> float:
    """How long a claimed delivery stays invisible: longer than one attempt can take."""
    return 3 * config.timeout_seconds + 5


@dataclass(frozen=True)
class Claimed:
    delivery_id: str
    attempt: int
    event_id: str
    event_type: str
    event_created_at: datetime
    job_id: str
    url: str
    secret_encrypted: str


def claim_due(session: Session, limit: int, lease: float) -> list[Claimed]:
    """Take up to ``limit`` due deliveries of enabled endpoints (skipping rows another loop
    has locked) and push their next attempt one lease ahead."""
    now = utcnow()
    due = list(
        session.scalars(
            select(WebhookDelivery.id)
            .join(WebhookEndpoint, WebhookEndpoint.id == WebhookDelivery.endpoint_id)
            .where(
                WebhookDelivery.status == "pending",
                WebhookDelivery.next_attempt_at <= now,
                WebhookEndpoint.enabled.is_(True),
            )
            .order_by(WebhookDelivery.next_attempt_at)
            .limit(limit)
            .with_for_update(skip_locked=True, of=WebhookDelivery)
        )
    )
    if not due:
        return []
    session.execute(
        update(WebhookDelivery)
        .where(WebhookDelivery.id.in_(due))
        .values(
            attempts=WebhookDelivery.attempts + 1,
            last_attempt_at=now,
            next_attempt_at=now + timedelta(seconds=lease),
        )
    )
    rows = session.execute(
        select(
            WebhookDelivery.id,
            WebhookDelivery.attempts,
            WebhookEvent.id,
            WebhookEvent.type,
            WebhookEvent.created_at,
            WebhookEvent.job_id,
            WebhookEndpoint.url,
            WebhookEndpoint.secret_encrypted,
        )
        .join(WebhookEvent, WebhookEvent.id == WebhookDelivery.event_id)
        .join(WebhookEndpoint, WebhookEndpoint.id == WebhookDelivery.endpoint_id)
        .where(WebhookDelivery.id.in_(due))
    ).all()
    return [Claimed(*row) for row in rows]


def record_outcome(
    session: Session, claimed: Claimed, outcome: transport.Outcome, config: WebhookConfig
) -> str:
    """Store an attempt's outcome; returns the delivery's new status. Fenced by the attempt
    number: a late answer to an attempt that was claimed again (or resent) changes nothing."""
    now = utcnow()
    values: dict[str, object] = {
        "last_status_code": outcome.status_code,
        "last_latency_ms": outcome.latency_ms,
        "last_error": outcome.error,
        "response_excerpt": outcome.excerpt,
    }
    if outcome.ok:
        values.update(status="succeeded", delivered_at=now, next_attempt_at=None)
    elif claimed.attempt >= config.max_attempts:
        values.update(status="failed", next_attempt_at=None)
    else:
        wait = backoff_seconds(claimed.attempt, config)
        values.update(status="pending", next_attempt_at=now + timedelta(seconds=wait))
    session.execute(
        update(WebhookDelivery)
        .where(
            WebhookDelivery.id == claimed.delivery_id,
            WebhookDelivery.attempts == claimed.attempt,
            WebhookDelivery.status == "pending",
        )
        .values(**values)
    )
    return str(values["status"])


def attempt(claimed: Claimed, box: SecretBox, config: WebhookConfig) -> transport.Outcome:
    """Sign and send one attempt. The URL is checked again: its name may resolve elsewhere
    now than when the endpoint was saved."""
    body = payload(claimed.event_id, claimed.event_type, claimed.event_created_at, claimed.job_id)
    headers = signed_headers(box.open(claimed.secret_encrypted), claimed.delivery_id, body)
    try:
        target = check_url(claimed.url, allow_private=config.allow_private)
    except InvalidRequest as exc:
        return transport.Outcome(None, 0, None, exc.message[:300])
    return transport.post(target, body, headers, config.timeout_seconds)


class DeliveryLoop:
    """Claims and sends deliveries until stopped; several loops (processes) may run at once."""

    def __init__(self, database_url: str, box: SecretBox, config: WebhookConfig) -> None:
        self.database_url = database_url
        self.box = box
        self.config = config
        self._pool = ThreadPoolExecutor(config.concurrency, thread_name_prefix="webhook")
        self._lock = threading.Lock()
        self._in_flight = 0
        self._slot_freed = threading.Event()

    def run_once(self) -> int:
        """Claim what is due (up to the free slots) and hand it to the pool."""
        with self._lock:
            free = self.config.concurrency - self._in_flight
        if free <= 0:
            return 0
        with session_scope(self.database_url) as session:
            claimed = claim_due(session, free, lease_seconds(self.config))
        with self._lock:
            self._in_flight += len(claimed)
        for item in claimed:
            self._pool.submit(self._deliver, item)
        return len(claimed)

    def _deliver(self, claimed: Claimed) -> None:
        try:
            outcome = attempt(claimed, self.box, self.config)
            with session_scope(self.database_url) as session:
                status = record_outcome(session, claimed, outcome, self.config)
            log.info(
                "webhook %s (%s for %s) attempt %d: %s -> %s",
                claimed.delivery_id,
                claimed.event_type,
                claimed.job_id,
                claimed.attempt,
                outcome.status_code or outcome.error,
                status,
            )
        except Exception:  # the database is briefly down: the lease brings it back
            log.exception("webhook %s: could not record the attempt", claimed.delivery_id)
        finally:
            with self._lock:
                self._in_flight -= 1
            self._slot_freed.set()

    def run_forever(self, stop: threading.Event) -> None:
        log.info("webhook delivery started (%d at once)", self.config.concurrency)
        wakeup = Wakeup(self.database_url)
        while not stop.is_set():
            try:
                claimed = self.run_once()
            except Exception:  # database briefly down: keep going
                log.exception("claiming webhook deliveries failed")
                claimed = 0
            if claimed:
                continue
            with self._lock:
                full = self._in_flight >= self.config.concurrency
                self._slot_freed.clear()
            if full:  # what is due waits for a slot, not for the next poll
                self._slot_freed.wait(self.config.poll_seconds)
            else:
                wakeup.wait(self.config.poll_seconds)
        wakeup.close()
        self.close(wait=False)

    def close(self, wait: bool = True) -> None:
        """Stop taking work; with wait, return once the deliveries in flight are recorded."""
        self._pool.shutdown(wait=wait, cancel_futures=not wait)


def start_in_thread(settings: Settings, stop: threading.Event) -> threading.Thread:
    """Run the delivery loop beside the scheduler's sweeps, in a daemon thread."""
    loop = DeliveryLoop(settings.database_url, secret_box(settings), webhook_config(settings))
    thread = threading.Thread(
        target=loop.run_forever, args=(stop,), name="webhook-delivery", daemon=True
    )
    thread.start()
    return thread
