"""The web dashboard (``/``), the API reference (``/docs``, ``/v1/openapi.json``).

The dashboard is a page of static JavaScript that calls the same-origin ``/v1`` API with the
session cookie (see ``api.websession``); this module only signs people in and out and serves
the shell, with security headers on every page.
"""

from __future__ import annotations

import copy
import mimetypes
from functools import lru_cache
from typing import Any

from flask import Blueprint, Flask, Response, redirect, render_template, request
from werkzeug.wrappers import Response as BaseResponse

from api import websession
from api.context import db, dorado
from api.openapi import build_openapi
from core.db.models import Organization
from core.errors import AuthenticationFailed
from core.jobs.status import (
    ACTIVE_STATUSES,
    ALL_STATUSES,
    FAILURE_HELP,
    FINAL_STATUSES,
    NON_FINAL_STATUSES,
    WAITING_STATUSES,
    JobStatus,
)
from core.settings import Settings
from core.tenancy.auth import authenticate
from core.webhooks.events import EVENT_TYPES

bp = Blueprint("dashboard", __name__)

CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data: blob:",
        "connect-src 'self'",
        "font-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    )
)
PAGE_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=()",
}


def init_app(app: Flask) -> None:
    """Security headers: nosniff on everything, the page policies on non-API responses.

    Also maps ``.js`` to ``text/javascript``: browsers run module scripts only when served
    with a JavaScript type, and Python takes the type from the host's mime.types (or the
    Windows registry), which can say ``text/plain``.
    """
    mimetypes.add_type("text/javascript", ".js")

    @app.after_request
    def _security_headers(response: Response) -> Response:
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        if not request.path.startswith("/v1/"):
            for name, value in PAGE_HEADERS.items():
                response.headers.setdefault(name, value)
        return response


@lru_cache(maxsize=1)
def openapi_document() -> dict[str, Any]:
    """``api.openapi``'s document plus the dashboard's own endpoint (the estimate)."""
    spec = copy.deepcopy(build_openapi())
    spec["paths"]["/v1/fine_tuning/jobs/estimate"] = {
        "post": {
            "summary": "Estimate a job before creating it (same body as create): steps, "
            "approximate tokens (characters / 4) and time",
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {"$ref": "#/components/schemas/JobCreateRequest"}
                    }
                },
            },
            "parameters": [],
            "responses": {
                "200": {
                    "description": "OK",
                    "content": {
                        "application/json": {
                            "schema": {"type": "object", "additionalProperties": True}
                        }
                    },
                },
                **{
                    str(status): {
                        "description": "Error",
                        "content": {
                            "application/json": {
                                "schema": {"$ref": "#/components/schemas/ErrorEnvelope"}
                            }
                        },
                    }
                    for status in (400, 401, 404)
                },
            },
        }
    }
    return spec


@lru_cache(maxsize=1)
def dashboard_enums() -> dict[str, Any]:
    """Job statuses, their groups and each failure code's help text, as the dashboard's
    scripts read them (``web/static/js/enums.js``) from a JSON block in the page: one list,
    ``core.jobs.status``, and no copy in the JavaScript to keep in step."""
    return {
        "status": {status.name: status.value for status in JobStatus},
        "statuses": [status.value for status in ALL_STATUSES],
        "groups": {
            "active": [status.value for status in ACTIVE_STATUSES],
            "waiting": [status.value for status in WAITING_STATUSES],
            "final": [status.value for status in FINAL_STATUSES],
            "non_final": [status.value for status in NON_FINAL_STATUSES],
        },
        "failure_help": {code.value: text for code, text in FAILURE_HELP.items()},
        "webhook_event_types": list(EVENT_TYPES),
    }


def dashboard_limits(settings: Settings) -> dict[str, int]:
    """The server's limits the dashboard's forms hold to, in the same JSON block as the enums
    (``limits``): a form offers no value the API would refuse."""
    return {"chat_max_tokens": settings.chat_max_tokens}


def _no_store(response: Response) -> Response:
    response.headers["Cache-Control"] = "no-store"
    return response


def _sign_in_page(error: str | None = None, status: int = 200) -> Response:
    html = render_template("login.html", csrf=websession.csrf_token(), error=error)
    return _no_store(Response(html, status=status, mimetype="text/html"))


@bp.get("/")
def index() -> Response:
    """The dashboard when signed in, else the sign-in form."""
    key = websession.signed_in_key(db())
    if key is None:
        return _sign_in_page()
    org = db().get(Organization, key.organization_id)
    html = render_template(
        "index.html",
        csrf=websession.csrf_token(),
        org_name=org.name if org else key.organization_id,
        key_prefix=key.prefix,
        key_scope=key.scope,
        enums={**dashboard_enums(), "limits": dashboard_limits(dorado().settings)},
    )
    return _no_store(Response(html, mimetype="text/html"))


@bp.get("/login")
def login_form() -> BaseResponse:
    return redirect("/", code=303)


@bp.post("/login")
def login() -> BaseResponse:
    """Check the API key once; the session keeps only its id."""
    if not websession.csrf_ok(request.form.get(websession.CSRF_FIELD)):
        return _sign_in_page(
            "Your sign-in form expired (or cookies are blocked). Please try again.", status=403
        )
    try:
        key = authenticate(db(), (request.form.get("api_key") or "").strip())
    except AuthenticationFailed:
        return _sign_in_page("That API key is not valid (or was revoked).", status=401)
    websession.sign_in(db(), key)
    return redirect("/", code=303)


@bp.post("/logout")
def logout() -> BaseResponse:
    if not websession.csrf_ok(request.form.get(websession.CSRF_FIELD)):
        return _no_store(
            Response("Missing or invalid CSRF token", status=403, mimetype="text/plain")
        )
    websession.sign_out(db())
    return redirect("/", code=303)


@bp.get("/v1/openapi.json")
def openapi_json() -> dict[str, Any]:
    """The OpenAPI document, as JSON."""
    return openapi_document()


@bp.get("/docs")
def api_docs() -> str:
    """The API reference, rendered from the OpenAPI document."""
    return render_template("docs.html", spec=openapi_document())
