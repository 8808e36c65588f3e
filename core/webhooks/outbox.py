"""The outbox: job status changes write their webhook event and its deliveries in the same
transaction, so an event exists exactly when the change was committed."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from core import ids
from core.db.models import Job, WebhookDelivery, WebhookEndpoint, WebhookEvent
from core.timeutil import utcnow
from core.webhooks.wakeup import notify


def emit_job_event(session: Session, job_id: str, event_type: str) -> WebhookEvent | None:
    """Queue ``event_type`` for ``job_id`` to every enabled endpoint of the job's organization
    that subscribed to it. Call it in the transaction that made the change; it does not
    commit. None (and nothing written) when no endpoint wants the event."""
    rows = session.execute(
        select(WebhookEndpoint.id, WebhookEndpoint.event_types, Job.organization_id)
        .join(Job, Job.organization_id == WebhookEndpoint.organization_id)
        .where(Job.id == job_id, WebhookEndpoint.enabled.is_(True))
    ).all()
    wanted = [row for row in rows if event_type in (row.event_types or [])]
    if not wanted:
        return None
    now = utcnow()
    event = WebhookEvent(
        id=ids.new_id("evt_"),
        organization_id=wanted[0].organization_id,
        type=event_type,
        job_id=job_id,
        created_at=now,
    )
    session.add(event)
    session.flush()
    session.add_all(
        WebhookDelivery(
            id=ids.new_id("wh_"),
            event_id=event.id,
            endpoint_id=row.id,
            status="pending",
            attempts=0,
            next_attempt_at=now,
            created_at=now,
        )
        for row in wanted
    )
    notify(session)
    return event
