"""``Idempotency-Key`` on POST /v1 requests: the first response is stored and replayed.

A response that carries a secret shown only once (a new API key, a webhook signing secret) is
stored without it: ``idempotency_keys`` is not a second place secrets live. A retry of such a
request gets the created object back with the secret field ``null`` (and no second object).
"""

from __future__ import annotations

import hashlib
import json
import logging

from flask import Flask, Response, g, request

from api.context import db
from api.errors import envelope
from core.tenancy import idempotency

log = logging.getLogger(__name__)

HEADER = "Idempotency-Key"
# Endpoint -> the response fields that hold a secret returned once and never stored.
SECRET_FIELDS: dict[str, tuple[str, ...]] = {
    "org_keys.create_key": ("key",),
    "admin_orgs.create_key": ("key",),
    "webhooks.create_endpoint": ("signing_secret",),
}


def storable_body(endpoint: str | None, body: str) -> str:
    """``body`` as it may be kept for replays: the endpoint's secret fields set to null."""
    fields = SECRET_FIELDS.get(endpoint or "")
    if not fields:
        return body
    try:
        data = json.loads(body)
    except ValueError:
        return body
    if not isinstance(data, dict):
        return body
    for name in fields:
        if name in data:
            data[name] = None
    return json.dumps(data)


def _body_digest() -> str:
    if request.mimetype != "multipart/form-data":
        return hashlib.sha256(request.get_data(cache=True)).hexdigest()
    # Multipart boundaries differ between retries: hash the fields and the files' bytes,
    # streamed from werkzeug's spooled copies (never held whole in memory).
    digest = hashlib.sha256()
    for name, value in sorted(request.form.items(multi=True)):
        digest.update(f"{name}={value}\n".encode())
    for name, upload in sorted(request.files.items(multi=True), key=lambda item: item[0]):
        digest.update(f"{name}:{upload.filename}\n".encode())
        while chunk := upload.stream.read(1024 * 1024):
            digest.update(chunk)
        upload.stream.seek(0)
    return digest.hexdigest()


def init_app(app: Flask) -> None:
    """Register after authentication (it needs the caller's organization)."""

    @app.before_request
    def _claim():
        key = request.headers.get(HEADER)
        if request.method != "POST" or key is None or not request.path.startswith("/v1/"):
            return None
        if "org_id" not in g:
            return None
        fingerprint = idempotency.request_fingerprint(request.method, request.path, _body_digest())
        # The request's own session: on SQLite a second connection would wait for its lock.
        outcome = idempotency.begin(db(), g.org_id, key, fingerprint)
        if outcome.replay:
            status, body = outcome.replay
            response = Response(body, status=status, mimetype="application/json")
            response.headers["Idempotent-Replayed"] = "true"
            return response
        if outcome.busy:
            response, status = envelope(
                409,
                "A request with this Idempotency-Key is still being processed; retry shortly",
                type="invalid_request_error",
                param=HEADER,
                code="idempotency_key_in_use",
            )
            response.headers["Retry-After"] = "1"  # the SDK retries 409 and honours this
            return response, status
        g.idempotency_record = outcome.record_id
        return None

    @app.after_request
    def _store(response: Response) -> Response:
        record_id = g.pop("idempotency_record", None)
        if record_id is None:
            return response
        session = db()
        try:
            if response.status_code < 400:
                # Hooks run in reverse order: commit the request's work before recording that
                # it is done, or a failed commit would be replayed as a success.
                session.commit()
            else:
                session.rollback()
            if response.status_code >= 500:
                idempotency.release(session, record_id)
            else:
                body = storable_body(request.endpoint, response.get_data(as_text=True))
                idempotency.finish(session, record_id, response.status_code, body)
        except Exception:
            session.rollback()
            idempotency.release(session, record_id)
            raise
        return response
