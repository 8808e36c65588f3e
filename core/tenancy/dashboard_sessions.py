"""Dashboard sign-ins kept server-side, so that signing out (or revoking the key) ends them.

The browser's cookie carries a random token; the database keeps only the token's SHA-256,
the key it signed in with and when it expires. A copy of the cookie taken before sign-out
names a row that no longer exists and opens nothing.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta

from sqlalchemy import delete
from sqlalchemy.orm import Session

from core.db.models import ApiKey, DashboardSession
from core.timeutil import utcnow


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def start(session: Session, key: ApiKey, lifetime: timedelta) -> str:
    """A new sign-in for ``key``; returns the token for the cookie (never stored)."""
    now = utcnow()
    # Each sign-in clears the key's expired ones: the table holds live sessions only.
    session.execute(
        delete(DashboardSession).where(
            DashboardSession.key_id == key.id, DashboardSession.expires_at < now
        )
    )
    token = secrets.token_urlsafe(32)
    session.add(
        DashboardSession(
            token_hash=_hash(token), key_id=key.id, created_at=now, expires_at=now + lifetime
        )
    )
    session.flush()
    return token


def resolve(session: Session, token: str) -> ApiKey | None:
    """The active key of a live sign-in, or None (signed out, expired or key revoked)."""
    row = session.get(DashboardSession, _hash(token))
    if row is None or row.expires_at <= utcnow():
        return None
    key = session.get(ApiKey, row.key_id)
    if key is None or key.revoked_at is not None:
        return None
    return key


def end(session: Session, token: str) -> None:
    """Sign out: the token opens nothing from now on. Idempotent."""
    session.execute(delete(DashboardSession).where(DashboardSession.token_hash == _hash(token)))
