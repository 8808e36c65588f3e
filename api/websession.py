"""The dashboard's sign-in session: a signed, HttpOnly cookie holding a sign-in token.

The raw key is never stored: the sign-in form checks it with ``core.tenancy.auth.authenticate``
and the cookie keeps a random token naming a server-side sign-in
(``core.tenancy.dashboard_sessions``), its organization and a CSRF token. Every later request
loads the sign-in and the key row again, so signing out or revoking the key ends the session,
also for a copy of the cookie. Requests authenticated by the session
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
from core.tenancy import dashboard_sessions

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


def sign_in(db: Session, key: ApiKey) -> None:
    """Start a fresh session for ``key`` (a new CSRF token too: no session fixation)."""
    sign_out(db)
    session.permanent = True
    session["sid"] = dashboard_sessions.start(db, key, SESSION_LIFETIME)
    session["org_id"] = key.organization_id
    session["csrf"] = secrets.token_urlsafe(32)


def sign_out(db: Session) -> None:
    """End the sign-in server-side (a kept copy of the cookie stops working) and clear it."""
    token = session.get("sid")
    if token:
        dashboard_sessions.end(db, str(token))
    session.clear()


def signed_in_key(db: Session) -> ApiKey | None:
    """The session's API key if its sign-in is live, the key not revoked and of its org."""
    token = session.get("sid")
    if not token:
        return None
    row = dashboard_sessions.resolve(db, str(token))
    if row is None or row.organization_id != session.get("org_id"):
        session.clear()
        return None
    return row


def authenticate_request(db: Session) -> ApiKey | None:
    """For ``/v1`` requests without ``Authorization``: the session's key, or None.

    Raises PermissionDenied (403) for a state-changing request without the CSRF token.
    """
    if not session.get("sid"):
        return None
    if request.method not in SAFE_METHODS and not csrf_ok(request.headers.get(CSRF_HEADER)):
        raise PermissionDenied(
            f"Missing or invalid CSRF token: the dashboard sends it as the {CSRF_HEADER} header",
            code="csrf_failed",
        )
    return signed_in_key(db)
