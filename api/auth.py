"""Bearer-token authentication for every ``/v1`` route."""

from __future__ import annotations

from flask import Flask, g, request

from api.context import db
from core.auth import authenticate

PUBLIC_PATHS = {"/v1/openapi.json"}


def init_app(app: Flask) -> None:
    @app.before_request
    def _authenticate():
        if not request.path.startswith("/v1/") or request.path in PUBLIC_PATHS:
            return None
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        key = token.strip() if scheme.lower() == "bearer" else None
        g.api_key = authenticate(db(), key)
        g.org_id = g.api_key.organization_id
        return None
