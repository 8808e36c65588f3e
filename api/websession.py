"""The dashboard's sign-in session: a signed, HttpOnly cookie holding only the API key's *id*.

The raw key is never stored: the sign-in form checks it with ``core.tenancy.auth.authenticate`` and
the session keeps the key id, its organization and a CSRF token. Every later request loads the
key row again, so revoking the key ends the session. Requests authenticated by the session
must carry the CSRF token (``X-CSRF-Token`` header, or the ``csrf_token`` form field) on any
state-changing method.
"""

from __future__ import annotations

import hmac
import logging
import secrets
from datetime import timedelta
from typing import Any

from flask import request, session
from sqlalchemy.orm import Session

from core.db.models import ApiKey
from core.errors import PermissionDenied
from core.settings import Settings

log = logging.getLogger(__name__)

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf_token"
SESSION_LIFETIME = timedelta(hours=12)


def session_config(settings: Settings) -> dict[str, Any]:
    """Flask config for the session cookie. ``DORADO_SESSION_COOKIE_SECURE=1`` adds the Secure
    flag (set it whenever the dashboard is served over HTTPS; it is off for plain-http
    localhost, where a Secure cookie would never be sent back)."""
    return {
        "SESSION_COOKIE_NAME": "dorado_session",
        "SESSION_COOKIE_HTTPONLY": True,
        "SESSION_COOKIE_SAMESITE": "Lax",
        "SESSION_COOKIE_SECURE": settings.session_cookie_secure,
        "PERMANENT_SESSION_LIFETIME": SESSION_LIFETIME,
    }


def csrf_token() -> str:
    """This session's CSRF token (created on first use)."""
    token = session.get("csrf")
    if not token:
        token = session["csrf"] = secrets.token_urlsafe(32)
    return token


def csrf_ok(sent: str | None) -> bool:
    expected = session.get("csrf")
    return bool(expected and sent) and hmac.compare_digest(str(expected), str(sent))


def sign_in(key: ApiKey) -> None:
    """Start a fresh session for ``key`` (a new CSRF token too: no session fixation)."""
    session.clear()
    session.permanent = True
    session["key_id"] = key.id
    session["org_id"] = key.organization_id
    session["csrf"] = secrets.token_urlsafe(32)


def sign_out() -> None:
    session.clear()


def signed_in_key(db: Session) -> ApiKey | None:
    """The session's API key if it still exists, is not revoked and belongs to its org."""
    key_id = session.get("key_id")
    if not key_id:
        return None
    row = db.get(ApiKey, key_id)
    if row is None or row.revoked_at is not None or row.organization_id != session.get("org_id"):
        sign_out()
        return None
    return row


def authenticate_request(db: Session) -> ApiKey | None:
    """For ``/v1`` requests without ``Authorization``: the session's key, or None.

    Raises PermissionDenied (403) for a state-changing request without the CSRF token.
    """
    if not session.get("key_id"):
        return None
    if request.method not in SAFE_METHODS and not csrf_ok(request.headers.get(CSRF_HEADER)):
        raise PermissionDenied(
            f"Missing or invalid CSRF token: the dashboard sends it as the {CSRF_HEADER} header",
            code="csrf_failed",
        )
    return signed_in_key(db)
