"""Idempotency keys: a retried POST (the openai SDK retries POSTs on timeouts and 5xx, with
no key of its own) returns the first result instead of doing the work twice."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from core.db.dml import rows_matched
from core.db.models import IdempotencyKey
from core.errors import InvalidRequest
from core.timeutil import utcnow

MAX_KEY_LENGTH = 255
# A request still "in progress" after this long is taken to have died with its process.
STALE_AFTER = timedelta(seconds=120)


@dataclass(frozen=True)
class Outcome:
    """``replay`` holds a stored (status, body); ``busy`` means the first try still runs;
    otherwise the caller owns the key (``record_id``) and must finish or release it."""

    record_id: int | None = None
    replay: tuple[int, str] | None = None
    busy: bool = False


def request_fingerprint(method: str, path: str, body_digest: str) -> str:
    return hashlib.sha256(f"{method} {path} {body_digest}".encode()).hexdigest()


def begin(session: Session, org_id: str, key: str, fingerprint: str) -> Outcome:
    """Claim ``key`` for this request (commits), or say how the earlier request ended."""
    if not key or len(key) > MAX_KEY_LENGTH:
        raise InvalidRequest(
            f"Idempotency-Key must be 1 to {MAX_KEY_LENGTH} characters", param="Idempotency-Key"
        )
    row = IdempotencyKey(
        organization_id=org_id,
        key=key,
        request_hash=fingerprint,
        state="in_progress",
        created_at=utcnow(),
    )
    session.add(row)
    try:
        session.commit()
        return Outcome(record_id=row.id)
    except IntegrityError:
        session.rollback()
    existing = session.scalar(
        select(IdempotencyKey).where(
            IdempotencyKey.organization_id == org_id, IdempotencyKey.key == key
        )
    )
    if existing is None:  # released between our insert and this read: try once more
        return begin(session, org_id, key, fingerprint)
    if existing.request_hash != fingerprint:
        raise InvalidRequest(
            "This Idempotency-Key was already used with a different request",
            param="Idempotency-Key",
            code="idempotency_key_reused",
        )
    if existing.state == "done":
        return Outcome(replay=(existing.response_status or 200, existing.response_body or ""))
    if utcnow() - existing.created_at < STALE_AFTER:
        return Outcome(busy=True)
    taken = rows_matched(
        session,
        update(IdempotencyKey)
        .where(
            IdempotencyKey.id == existing.id,
            IdempotencyKey.state == "in_progress",
            IdempotencyKey.created_at == existing.created_at,
        )
        .values(created_at=utcnow()),
    )
    session.commit()
    return Outcome(record_id=existing.id) if taken == 1 else Outcome(busy=True)


def finish(session: Session, record_id: int, status: int, body: str) -> None:
    session.execute(
        update(IdempotencyKey)
        .where(IdempotencyKey.id == record_id)
        .values(state="done", response_status=status, response_body=body)
    )
    session.commit()


def release(session: Session, record_id: int) -> None:
    """The request failed on our side (5xx): a retry must run it again."""
    session.execute(delete(IdempotencyKey).where(IdempotencyKey.id == record_id))
    session.commit()
