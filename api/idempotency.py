"""``Idempotency-Key`` on POST /v1 requests: the first response is stored and replayed."""

from __future__ import annotations

import hashlib
import logging

from flask import Flask, Response, g, request

from api.context import db
from api.errors import envelope
from core.tenancy import idempotency

log = logging.getLogger(__name__)

HEADER = "Idempotency-Key"


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
                idempotency.finish(
                    session, record_id, response.status_code, response.get_data(as_text=True)
                )
        except Exception:
            session.rollback()
            idempotency.release(session, record_id)
            raise
        return response
