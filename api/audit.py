"""Audit entries for API requests: a helper that fills in who (key, actor, IP), and a hook
that records every successful state-changing ``/v1`` request and every download.

Routes with something to add (details, another organization) call :func:`audit`; the hook
then leaves that request alone. Every other successful POST/PUT/PATCH/DELETE and download
gets an entry named from :data:`ACTIONS` (or ``<method>:<endpoint>`` for a route not listed
there), so a new route is audited even before anyone thinks of it.
"""

from __future__ import annotations

import json
from typing import Any

from flask import Flask, Response, g, request

from api.context import db
from core.tenancy import audit as audit_log

# endpoint -> (action, object type). Reads other than downloads are not audited.
ACTIONS: dict[str, tuple[str, str]] = {
    "files.create_file": ("file.create", "file"),
    "files.delete_file": ("file.delete", "file"),
    "files.file_content": ("file.download", "file"),
    "jobs.create_job": ("job.create", "fine_tuning.job"),
    "jobs.cancel_job": ("job.cancel", "fine_tuning.job"),
    "jobs.pause_job": ("job.pause", "fine_tuning.job"),
    "jobs.resume_job": ("job.resume", "fine_tuning.job"),
    "jobs.download_adapter": ("adapter.download", "fine_tuning.job"),
    "inference.download_merged": ("adapter.download", "fine_tuning.job"),
    "models.delete_model": ("model.delete", "model"),
}
DOWNLOAD_ENDPOINTS = frozenset(
    {"files.file_content", "jobs.download_adapter", "inference.download_merged"}
)
# State-changing methods that change no state: nothing to audit.
NOT_AUDITED = frozenset({"estimate.estimate", "inference.chat_completions"})
MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def actor() -> str:
    """The request's actor: ``key:<visible prefix>`` of the calling key."""
    key = g.get("api_key")
    return f"key:{key.prefix}" if key is not None else "anonymous"


def audit(
    action: str,
    object_type: str,
    object_id: str,
    *,
    organization_id: str | None = None,
    details: dict[str, Any] | None = None,
) -> None:
    """Record an audit event for this request (in its transaction); ``organization_id``
    defaults to the caller's."""
    key = g.get("api_key")
    audit_log.record(
        db(),
        action=action,
        object_type=object_type,
        object_id=object_id,
        organization_id=organization_id or g.get("org_id"),
        actor=actor(),
        api_key_id=key.id if key is not None else None,
        details=details,
        ip=request.remote_addr,
    )
    g.audited = True


def audit_request(object_id: str) -> None:
    """Record the entry the hook would record for this request, now: a route that commits
    its action itself calls this first, so the entry goes in the same commit (one
    transaction fewer) and the hook leaves the request alone."""
    endpoint = request.endpoint or ""
    action, object_type = ACTIONS.get(endpoint, (f"{request.method.lower()}:{endpoint}", "request"))
    details: dict[str, Any] = {"path": request.path}
    if request.args.get("checkpoint"):
        details["checkpoint"] = request.args["checkpoint"]
    if request.args.get("format"):
        details["format"] = request.args["format"]
    audit(action, object_type, object_id, details=details)


def _object_id(response: Response) -> str:
    if request.view_args:
        return str(next(iter(request.view_args.values())))
    if response.mimetype == "application/json" and not response.is_streamed:
        try:
            body = json.loads(response.get_data())
        except ValueError:
            body = None
        if isinstance(body, dict) and body.get("id"):
            return str(body["id"])
    return ""


def init_app(app: Flask) -> None:
    """Register after ``api.context`` (so its commit runs after this hook) and after auth."""

    @app.after_request
    def _audit_request(response: Response) -> Response:
        endpoint = request.endpoint or ""
        if (
            response.status_code >= 400
            or g.pop("audited", False)
            or "api_key" not in g
            or endpoint in NOT_AUDITED
            or response.headers.get("Idempotent-Replayed")
        ):
            return response
        if request.method not in MUTATING and endpoint not in DOWNLOAD_ENDPOINTS:
            return response
        # In the request's transaction, committed by api.context with the action itself (or
        # by itself for routes that committed earlier): no entry, no success.
        audit_request(_object_id(response))
        return response
