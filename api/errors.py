"""Every error leaves the API in OpenAI's envelope:
``{"error": {"message", "type", "param", "code"}}``.

Statuses are chosen for the openai SDK, which retries 408/409/429/5xx: an error the client
cannot fix by retrying must never be one of those.
"""

from __future__ import annotations

import logging

from flask import Flask, g, jsonify
from pydantic import ValidationError
from sqlalchemy.exc import DisconnectionError, OperationalError
from werkzeug.exceptions import HTTPException

from core.errors import (
    AuthenticationFailed,
    Conflict,
    DoradoError,
    InvalidFile,
    InvalidRequest,
    NotFound,
    PayloadTooLarge,
    PermissionDenied,
    QuotaExceeded,
)
from core.storage.objects import ObjectNotFound

log = logging.getLogger(__name__)

_STATUS: list[tuple[type[DoradoError], int, str]] = [
    (AuthenticationFailed, 401, "invalid_request_error"),
    (PermissionDenied, 403, "invalid_request_error"),
    (NotFound, 404, "invalid_request_error"),
    (PayloadTooLarge, 413, "invalid_request_error"),
    # As OpenAI answers a spent quota: 429 (waiting for jobs to finish frees the quota).
    (QuotaExceeded, 429, "insufficient_quota"),
    # 400, not 409: the SDK would retry a 409, and retrying cannot help here.
    (Conflict, 400, "invalid_request_error"),
    (InvalidRequest, 400, "invalid_request_error"),
]


def envelope(
    status: int,
    message: str,
    *,
    type: str,
    param: str | None = None,
    code: str | None = None,
    **extra,
):
    body = {"error": {"message": message, "type": type, "param": param, "code": code, **extra}}
    return jsonify(body), status


def pydantic_error(exc: ValidationError, prefix: str = ""):
    first = exc.errors()[0]
    loc = [str(p) for p in first.get("loc", ()) if not str(p).startswith(("function-", "literal"))]
    param = ".".join([prefix] + loc if prefix else loc) or None
    message = first.get("msg", "invalid value")
    if first.get("type") == "extra_forbidden":
        message = "unrecognised field"
    elif first.get("type") == "missing":
        message = "field required"
    return envelope(
        400,
        f"Invalid value for '{param}': {message}" if param else message,
        type="invalid_request_error",
        param=param,
        code="invalid_value",
    )


def init_app(app: Flask) -> None:
    @app.errorhandler(DoradoError)
    def _domain(exc: DoradoError):
        for cls, status, kind in _STATUS:
            if isinstance(exc, cls):
                extra = {}
                if isinstance(exc, InvalidFile) and exc.problems:
                    extra["problems"] = exc.problems
                return envelope(
                    status, exc.message, type=kind, param=exc.param, code=exc.code, **extra
                )
        return envelope(
            400, exc.message, type="invalid_request_error", param=exc.param, code=exc.code
        )

    @app.errorhandler(ObjectNotFound)
    def _missing_object(exc: ObjectNotFound):
        log.error("stored object missing: %s", exc)
        return envelope(
            404,
            "The stored content of this object is missing",
            type="invalid_request_error",
            code="content_missing",
        )

    @app.errorhandler(OperationalError)
    @app.errorhandler(DisconnectionError)
    def _database_down(exc: Exception):
        # The SDK retries 503 and honours retry-after: a database restart looks like a pause.
        log.warning("database unavailable in request %s: %s", getattr(g, "request_id", "?"), exc)
        response, status = envelope(
            503,
            "The service is temporarily unavailable (database unreachable); retry shortly",
            type="server_error",
            code="service_unavailable",
        )
        response.headers["Retry-After"] = "2"
        return response, status

    @app.errorhandler(ValidationError)
    def _validation(exc: ValidationError):
        return pydantic_error(exc)

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException):
        status = exc.code or 500
        if status == 413:
            return envelope(
                413,
                "The request is too large",
                type="invalid_request_error",
                code="payload_too_large",
            )
        message = exc.description or exc.name
        if status == 404:
            message = "Unknown URL. See /v1/openapi.json for the API."
        return envelope(
            status, message, type="invalid_request_error", code=exc.name.lower().replace(" ", "_")
        )

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):
        log.exception("unhandled error in request %s", getattr(g, "request_id", "?"))
        return envelope(
            500,
            "The server had an error while processing your request. "
            f"Request id: {getattr(g, 'request_id', '?')}",
            type="server_error",
        )
