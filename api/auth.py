"""Bearer-token authentication for every ``/v1`` route (or the dashboard's session cookie)."""

from __future__ import annotations

from flask import Flask, g, request

from api import websession
from api.context import db
from core.auth import authenticate

PUBLIC_PATHS = {"/v1/openapi.json"}


def init_app(app: Flask) -> None:
    @app.before_request
    def _authenticate():
        if not request.path.startswith("/v1/") or request.path in PUBLIC_PATHS:
            return None
        header = request.headers.get("Authorization", "")
        if not header:
            # The dashboard: its session holds a key id (never the key) and needs CSRF tokens.
            row = websession.authenticate_request(db())
            if row is not None:
                g.api_key = row
                g.org_id = row.organization_id
                return None
        scheme, _, token = header.partition(" ")
        key = token.strip() if scheme.lower() == "bearer" else None
        g.api_key = authenticate(db(), key)
        g.org_id = g.api_key.organization_id
        return None
