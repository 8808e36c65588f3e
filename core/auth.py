"""Organizations and API keys. Keys are stored only as SHA-256 hashes."""

from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from core import ids
from core.errors import AuthenticationFailed
from core.models import ApiKey, Organization
from core.timeutil import utcnow

KEY_PREFIX = "dor-"
VISIBLE_PREFIX_CHARS = 12
LAST_USED_RESOLUTION = timedelta(seconds=60)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def generate_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(30)


def create_organization(session: Session, name: str) -> Organization:
    org = Organization(id=ids.org_id(), name=name, created_at=utcnow())
    session.add(org)
    session.flush()
    return org


def add_key(session: Session, org: Organization, key: str, *, name: str = "",
            scope: str = "admin") -> ApiKey:
    """Store ``key`` (already generated or supplied by an operator) for ``org``."""
    row = ApiKey(
        id=ids.api_key_id(), organization_id=org.id, name=name,
        prefix=key[:VISIBLE_PREFIX_CHARS], key_hash=hash_key(key), scope=scope,
        created_at=utcnow(),
    )
    session.add(row)
    session.flush()
    return row


def find_key(session: Session, key: str) -> ApiKey | None:
    return session.scalar(select(ApiKey).where(ApiKey.key_hash == hash_key(key)))


def authenticate(session: Session, key: str | None) -> ApiKey:
    """The active key row for a bearer token, or AuthenticationFailed."""
    if not key:
        raise AuthenticationFailed(
            "You didn't provide an API key. Send it as 'Authorization: Bearer <key>'."
        )
    row = find_key(session, key)
    if row is None or row.revoked_at is not None:
        shown = key[:VISIBLE_PREFIX_CHARS] + "..." if len(key) > VISIBLE_PREFIX_CHARS else "***"
        raise AuthenticationFailed(f"Incorrect API key provided: {shown}")
    now = utcnow()
    # Throttled: a write on every request would make reads contend with workers' writes.
    if row.last_used_at is None or now - row.last_used_at > LAST_USED_RESOLUTION:
        session.execute(update(ApiKey).where(ApiKey.id == row.id).values(last_used_at=now))
    return row
