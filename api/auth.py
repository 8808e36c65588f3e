"""Who may call what: bearer-token (or dashboard session) authentication for every ``/v1``
route, then the key's scope, enforced here for every route rather than route by route.

- ``read-only``: safe methods only (GET/HEAD), downloads included;
- ``member``: all of ``/v1`` except key management (``/v1/organization/...``) and
  ``/v1/admin/...``;
- ``admin``: all of its organization, key management included; ``/v1/admin/...`` also needs
  the key's organization to be an operator organization.
"""

from __future__ import annotations

from flask import Flask, g, request

from api import websession
from api.context import db
from core.db.models import ApiKey, Organization
from core.errors import PermissionDenied
from core.tenancy.auth import authenticate

PUBLIC_PATHS = {"/v1/openapi.json"}
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
ADMIN_PREFIX = "/v1/admin/"
KEY_MANAGEMENT_PREFIX = "/v1/organization/"


def _under(path: str, prefix: str) -> bool:
    return path.startswith(prefix) or path == prefix.rstrip("/")


def authorize(key: ApiKey, method: str, path: str) -> None:
    """Raise PermissionDenied unless ``key`` may make this request."""
    if key.scope == "read-only" and method not in SAFE_METHODS:
        raise PermissionDenied(
            "This API key is read-only: it may only read (GET) resources", code="insufficient_scope"
        )
    admin_area = _under(path, ADMIN_PREFIX)
    if (admin_area or _under(path, KEY_MANAGEMENT_PREFIX)) and key.scope != "admin":
        raise PermissionDenied(
            "This API key lacks the 'admin' scope needed here", code="insufficient_scope"
        )
    if admin_area:
        org = db().get(Organization, key.organization_id)
        if org is None or not org.is_operator:
            raise PermissionDenied(
                "Only keys of an operator organization may use /v1/admin endpoints",
                code="permission_denied",
            )


def init_app(app: Flask) -> None:
    @app.before_request
    def _authenticate():
        if not request.path.startswith("/v1/") or request.path in PUBLIC_PATHS:
            return None
        header = request.headers.get("Authorization", "")
        row = None
        if not header:
            # The dashboard: its session holds a key id (never the key) and needs CSRF tokens.
            row = websession.authenticate_request(db())
        if row is None:
            scheme, _, token = header.partition(" ")
            key = token.strip() if scheme.lower() == "bearer" else None
            row = authenticate(db(), key)
        g.api_key = row
        g.org_id = row.organization_id
        authorize(row, request.method, request.path)
        return None
