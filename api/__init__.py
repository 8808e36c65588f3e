"""The Dorado API: an OpenAI-compatible fine-tuning API under /v1 plus the dashboard."""

from __future__ import annotations

import re
import secrets
from pathlib import Path
from typing import Any

from flask import Flask, g, request

from core.settings import Settings, load_settings
from core.tenancy.secret import platform_secret

WEB_DIR = Path(__file__).resolve().parent.parent / "web"
# A client's X-Request-Id is kept only if it looks like an id: it is echoed in a header and
# written to logs, where 8 KB of HTML (or a forged log line) has no business.
CLIENT_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def request_id(sent: str | None) -> str:
    """The request's id: the client's ``X-Request-Id`` if well-formed, else a new one."""
    if sent and CLIENT_REQUEST_ID.fullmatch(sent):
        return sent
    return f"req_{secrets.token_hex(12)}"


def create_app(settings: Settings | None = None, config: dict[str, Any] | None = None) -> Flask:
    """App factory: no network clients are created at import time."""
    from api import audit, auth, context, errors, idempotency, limits, websession
    from api.json_body import BoundedJSONProvider
    from api.routes import dashboard, estimate, files, health, inference, jobs, models

    settings = settings or load_settings()
    app = Flask(
        __name__,
        template_folder=str(WEB_DIR / "templates"),
        static_folder=str(WEB_DIR / "static"),
        static_url_path="/static",
    )
    app.config.update(
        MAX_CONTENT_LENGTH=settings.max_upload_bytes + 1024 * 1024,
        SECRET_KEY=platform_secret(settings),
        **websession.session_config(settings),
        JSON_SORT_KEYS=False,
    )
    app.json = BoundedJSONProvider(app)  # bounded parsing; responses keep OpenAI's order
    if config:
        app.config.update(config)

    @app.before_request
    def _request_id():
        g.request_id = request_id(request.headers.get("X-Request-Id"))

    @app.after_request
    def _request_id_header(response):
        response.headers["x-request-id"] = g.get("request_id", "")
        return response

    # First: its timer wraps every other hook, and its /healthz wins over the dashboard's.
    health.init_app(app)
    context.init_app(app, settings)
    auth.init_app(app)
    limits.init_app(app)
    idempotency.init_app(app)
    audit.init_app(app)
    errors.init_app(app)
    for bp in (files.bp, jobs.bp, models.bp, estimate.bp, inference.bp, dashboard.bp):
        app.register_blueprint(bp)
    from api.routes import admin_audit, admin_orgs, org_integrations, org_keys

    app.register_blueprint(admin_orgs.bp)
    app.register_blueprint(admin_audit.bp)
    app.register_blueprint(org_keys.bp)
    app.register_blueprint(org_integrations.bp)
    from api.routes import admin_catalog

    app.register_blueprint(admin_catalog.bp)
    from api.routes import admin_queue

    app.register_blueprint(admin_queue.bp)
    from api.routes import webhooks

    app.register_blueprint(webhooks.bp)
    dashboard.init_app(app)
    return app
