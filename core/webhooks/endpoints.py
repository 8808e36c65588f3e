"""Webhook endpoints of an organization (create, list, update, disable, delete) and their
delivery log (list, resend). Services take a Session and never commit."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from core import ids
from core.db.keyset import after_cursor
from core.db.models import WebhookDelivery, WebhookEndpoint, WebhookEvent
from core.errors import InvalidRequest, NotFound
from core.settings import Settings
from core.tenancy.secret import platform_secret
from core.timeutil import to_unix, utcnow
from core.webhooks import signing
from core.webhooks.events import EVENT_TYPES
from core.webhooks.urls import check_url

MAX_NAME_LENGTH = 200
DELIVERY_STATUSES = ("pending", "succeeded", "failed")


def secret_box(settings: Settings) -> signing.SecretBox:
    """The box that seals endpoints' signing secrets with this deployment's platform secret."""
    return signing.SecretBox(platform_secret(settings))


@dataclass(frozen=True)
class NewEndpoint:
    row: WebhookEndpoint
    secret: str  # shown once, in the creation response


def _name(value: object) -> str:
    if not isinstance(value, str) or len(value) > MAX_NAME_LENGTH:
        raise InvalidRequest(
            f"'name' must be a string of at most {MAX_NAME_LENGTH} characters", param="name"
        )
    return value


def _event_types(value: object) -> list[str]:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise InvalidRequest(
            f"'event_types' must be a non-empty list; known types: {', '.join(EVENT_TYPES)}",
            param="event_types",
        )
    unknown = sorted(set(value) - set(EVENT_TYPES))
    if unknown:
        raise InvalidRequest(
            f"Unknown event type(s) {', '.join(unknown)}; known: {', '.join(EVENT_TYPES)}",
            param="event_types",
        )
    return [t for t in EVENT_TYPES if t in value]


def create_endpoint(
    session: Session,
    box: signing.SecretBox,
    org_id: str,
    *,
    url: object,
    event_types: object,
    name: object = "",
    allow_private: bool,
) -> NewEndpoint:
    """A new endpoint with a fresh ``whsec_`` signing secret (returned once, stored sealed)."""
    check_url(url, allow_private=allow_private)
    secret = signing.new_secret()
    now = utcnow()
    row = WebhookEndpoint(
        id=ids.new_id("whep_"),
        organization_id=org_id,
        name=_name(name),
        url=str(url),
        event_types=_event_types(event_types),
        secret_encrypted=box.seal(secret),
        secret_hint=signing.secret_hint(secret),
        enabled=True,
        created_at=now,
        updated_at=now,
    )
    session.add(row)
    session.flush()
    return NewEndpoint(row, secret)


def get_endpoint(session: Session, org_id: str | None, endpoint_id: str) -> WebhookEndpoint:
    """The endpoint, if it belongs to ``org_id`` (None: any organization, for operators)."""
    row = session.get(WebhookEndpoint, endpoint_id)
    if row is None or (org_id is not None and row.organization_id != org_id):
        raise NotFound(f"No such webhook endpoint: {endpoint_id}", param="webhook_endpoint_id")
    return row


def list_endpoints(
    session: Session, org_id: str | None, *, limit: int = 100, after: str | None = None
) -> tuple[list[WebhookEndpoint], bool]:
    """Newest first; ``org_id`` None lists every organization's (operators)."""
    stmt = select(WebhookEndpoint)
    if org_id is not None:
        stmt = stmt.where(WebhookEndpoint.organization_id == org_id)
    if after:
        try:
            cursor = get_endpoint(session, org_id, after)
        except NotFound:
            raise InvalidRequest(f"No such webhook endpoint: {after}", param="after") from None
        stmt = stmt.where(
            after_cursor(
                WebhookEndpoint.created_at, WebhookEndpoint.id, cursor.created_at, cursor.id
            )
        )
    stmt = stmt.order_by(WebhookEndpoint.created_at.desc(), WebhookEndpoint.id.desc())
    rows = list(session.scalars(stmt.limit(limit + 1)))
    return rows[:limit], len(rows) > limit


def update_endpoint(
    session: Session,
    org_id: str | None,
    endpoint_id: str,
    changes: dict[str, Any],
    *,
    allow_private: bool,
) -> WebhookEndpoint:
    """Change ``name``, ``url``, ``event_types`` and/or ``enabled`` (False disables it: no new
    deliveries are queued for it and pending ones wait until it is enabled again)."""
    row = get_endpoint(session, org_id, endpoint_id)
    unknown = sorted(set(changes) - {"name", "url", "event_types", "enabled"})
    if unknown:
        raise InvalidRequest(f"Unknown field(s): {', '.join(unknown)}", param=unknown[0])
    if "name" in changes:
        row.name = _name(changes["name"])
    if "url" in changes:
        check_url(changes["url"], allow_private=allow_private)
        row.url = changes["url"]
    if "event_types" in changes:
        row.event_types = _event_types(changes["event_types"])
    if "enabled" in changes:
        if not isinstance(changes["enabled"], bool):
            raise InvalidRequest("'enabled' must be true or false", param="enabled")
        row.enabled = changes["enabled"]
    if session.is_modified(row):
        row.updated_at = utcnow()
    session.flush()
    return row


def delete_endpoint(session: Session, org_id: str | None, endpoint_id: str) -> WebhookEndpoint:
    """Delete the endpoint and its delivery log."""
    row = get_endpoint(session, org_id, endpoint_id)
    session.execute(delete(WebhookDelivery).where(WebhookDelivery.endpoint_id == row.id))
    session.execute(delete(WebhookEndpoint).where(WebhookEndpoint.id == row.id))
    return row


def endpoint_dict(row: WebhookEndpoint, secret: str | None = None) -> dict[str, Any]:
    """The wire form, shaped as OpenAI's ``webhook_endpoint`` (plus Dorado's ``enabled``)."""
    out: dict[str, Any] = {
        "id": row.id,
        "object": "webhook_endpoint",
        "name": row.name,
        "url": row.url,
        "event_types": list(row.event_types),
        "enabled": row.enabled,
        "signing_secret_hint": row.secret_hint,
        "created_at": to_unix(row.created_at),
        "updated_at": to_unix(row.updated_at),
    }
    if secret is not None:
        out["signing_secret"] = secret
    return out


# --- the delivery log --------------------------------------------------------------------


def list_deliveries(
    session: Session,
    endpoint: WebhookEndpoint,
    *,
    limit: int = 20,
    after: str | None = None,
    status: str | None = None,
) -> tuple[list[tuple[WebhookDelivery, WebhookEvent]], bool]:
    """An endpoint's deliveries, newest first, with their events."""
    if status is not None and status not in DELIVERY_STATUSES:
        raise InvalidRequest(
            f"Unknown status '{status}'. One of: {', '.join(DELIVERY_STATUSES)}", param="status"
        )
    stmt = (
        select(WebhookDelivery, WebhookEvent)
        .join(WebhookEvent, WebhookEvent.id == WebhookDelivery.event_id)
        .where(WebhookDelivery.endpoint_id == endpoint.id)
    )
    if status is not None:
        stmt = stmt.where(WebhookDelivery.status == status)
    if after:
        cursor = session.get(WebhookDelivery, after)
        if cursor is None or cursor.endpoint_id != endpoint.id:
            raise InvalidRequest(f"No such delivery: {after}", param="after")
        stmt = stmt.where(
            after_cursor(
                WebhookDelivery.created_at, WebhookDelivery.id, cursor.created_at, cursor.id
            )
        )
    stmt = stmt.order_by(WebhookDelivery.created_at.desc(), WebhookDelivery.id.desc())
    rows = list(session.execute(stmt.limit(limit + 1)).tuples())
    return rows[:limit], len(rows) > limit


def get_delivery(
    session: Session, org_id: str | None, delivery_id: str
) -> tuple[WebhookDelivery, WebhookEvent]:
    row = session.execute(
        select(WebhookDelivery, WebhookEvent, WebhookEndpoint.organization_id)
        .join(WebhookEvent, WebhookEvent.id == WebhookDelivery.event_id)
        .join(WebhookEndpoint, WebhookEndpoint.id == WebhookDelivery.endpoint_id)
        .where(WebhookDelivery.id == delivery_id)
    ).first()
    if row is None or (org_id is not None and row[2] != org_id):
        raise NotFound(f"No such webhook delivery: {delivery_id}", param="delivery_id")
    return row[0], row[1]


def resend_delivery(
    session: Session, org_id: str | None, delivery_id: str
) -> tuple[WebhookDelivery, WebhookEvent]:
    """Send a delivery again now, with the same ``webhook-id`` and a fresh retry budget."""
    delivery, event = get_delivery(session, org_id, delivery_id)
    session.execute(
        update(WebhookDelivery)
        .where(WebhookDelivery.id == delivery.id)
        .values(status="pending", attempts=0, next_attempt_at=utcnow())
    )
    session.refresh(delivery)
    return delivery, event


def delivery_dict(delivery: WebhookDelivery, event: WebhookEvent) -> dict[str, Any]:
    return {
        "id": delivery.id,
        "object": "webhook_endpoint.delivery",
        "endpoint_id": delivery.endpoint_id,
        "event_id": event.id,
        "event_type": event.type,
        "job_id": event.job_id,
        "status": delivery.status,
        "attempts": delivery.attempts,
        "last_status_code": delivery.last_status_code,
        "last_latency_ms": delivery.last_latency_ms,
        "last_error": delivery.last_error,
        "response_excerpt": delivery.response_excerpt,
        "next_attempt_at": to_unix(delivery.next_attempt_at)
        if delivery.status == "pending"
        else None,
        "last_attempt_at": to_unix(delivery.last_attempt_at),
        "delivered_at": to_unix(delivery.delivered_at),
        "created_at": to_unix(delivery.created_at),
    }
