"""The audit log: who created, changed, downloaded or deleted what, when, with which key.

Callers record an event in the same session (and so the same transaction) as the action it
describes: a rolled-back action leaves no audit entry, and a committed one always has one.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from core import ids
from core.db.models import AuditEvent
from core.errors import InvalidRequest
from core.timeutil import utcnow


def record(
    session: Session,
    *,
    action: str,
    object_type: str,
    object_id: str,
    organization_id: str | None,
    actor: str,
    api_key_id: str | None = None,
    details: dict[str, Any] | None = None,
    ip: str | None = None,
) -> None:
    """Add one audit event to ``session`` (flushed and committed with the caller's work).

    ``actor`` names who acted: ``key:<visible prefix>`` for API keys, ``cli:<os user>`` for
    ``dorado-admin``. ``details`` must never hold secrets.
    """
    session.add(
        AuditEvent(
            id=ids.new_id("audit_"),
            created_at=utcnow(),
            organization_id=organization_id,
            actor=actor[:256],
            api_key_id=api_key_id,
            action=action[:64],
            object_type=object_type[:64],
            object_id=str(object_id)[:256],
            ip=(ip or None) and ip[:64],
            details=details,
        )
    )
    session.flush()


@dataclass(frozen=True)
class AuditFilter:
    """What to read back: every field is optional."""

    organization_id: str | None = None
    action: str | None = None
    since: datetime | None = None
    object_id: str | None = None


def list_events(
    session: Session, flt: AuditFilter, *, limit: int, after: str | None = None
) -> tuple[list[AuditEvent], bool]:
    """A page of events, newest first; ``after`` is the id of the last event already seen."""
    stmt = select(AuditEvent)
    if flt.organization_id:
        stmt = stmt.where(AuditEvent.organization_id == flt.organization_id)
    if flt.action:
        stmt = stmt.where(AuditEvent.action == flt.action)
    if flt.object_id:
        stmt = stmt.where(AuditEvent.object_id == flt.object_id)
    if flt.since is not None:
        stmt = stmt.where(AuditEvent.created_at >= flt.since)
    if after:
        cursor = session.scalar(select(AuditEvent.seq).where(AuditEvent.id == after))
        if cursor is None:
            raise InvalidRequest(f"No such audit event: {after}", param="after")
        stmt = stmt.where(AuditEvent.seq < cursor)
    rows = list(session.scalars(stmt.order_by(AuditEvent.seq.desc()).limit(limit + 1)))
    return rows[:limit], len(rows) > limit


def event_dict(event: AuditEvent) -> dict[str, Any]:
    """The wire/CLI form of one event."""
    return {
        "id": event.id,
        "object": "audit.event",
        "created_at": int(event.created_at.timestamp()),
        "organization_id": event.organization_id,
        "actor": event.actor,
        "api_key_id": event.api_key_id,
        "action": event.action,
        "object_type": event.object_type,
        "object_id": event.object_id,
        "ip": event.ip,
        "details": event.details,
    }
