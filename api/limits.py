"""Request limits enforced before any route runs: the per-key and per-organization rate
limits (429), the JSON body size (413) and the body's content type (415).

The openai SDK retries 429 honouring ``retry-after-ms``/``retry-after``; it does not retry
413 and 415, which a retry could not fix. A NUL character in any input is a 400 (PostgreSQL
cannot hold one).
"""

from __future__ import annotations

from typing import Any

from flask import Flask, Response, g, request

from api.context import dorado
from api.errors import envelope
from core.tenancy.ratelimit import Decision, RateLimiter, header_seconds, open_limiter

MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# Routes that take a multipart upload; every other route with a body takes JSON.
MULTIPART_ENDPOINTS = frozenset({"files.create_file"})
JSON_TYPES = frozenset({"application/json"})


def _duration(seconds: float) -> str:
    """OpenAI's style for ``x-ratelimit-reset-*``: ``250ms``, ``7s``, ``1m30s``."""
    if seconds < 1:
        return f"{int(seconds * 1000)}ms"
    if seconds < 60:
        return f"{seconds:.0f}s"
    return f"{int(seconds // 60)}m{int(seconds % 60)}s"


def _rate_headers(response: Response, decision: Decision) -> None:
    response.headers["x-ratelimit-limit-requests"] = str(decision.limit)
    response.headers["x-ratelimit-remaining-requests"] = str(decision.remaining)
    response.headers["x-ratelimit-reset-requests"] = _duration(decision.reset_seconds)


def _has_body() -> bool:
    return bool(request.content_length) or "chunked" in (
        request.headers.get("Transfer-Encoding", "").lower()
    )


def _is_json(mimetype: str) -> bool:
    return mimetype in JSON_TYPES or (
        mimetype.startswith("application/") and mimetype.endswith("+json")
    )


def check_body() -> tuple[Response, int] | None:
    """413 for an oversized JSON body, 415 for a body of the wrong type; else None."""
    if request.method not in MUTATING or not _has_body():
        return None
    mimetype = request.mimetype or ""
    if request.endpoint in MULTIPART_ENDPOINTS:
        # A form without its file part still reaches the route, which names what is missing.
        if mimetype not in ("multipart/form-data", "application/x-www-form-urlencoded"):
            return envelope(
                415,
                "This endpoint takes a multipart/form-data upload (got "
                f"'{mimetype or 'no content type'}')",
                type="invalid_request_error",
                code="unsupported_media_type",
            )
        return None
    # No declared type at all: the route's parser answers 400 ("must be a JSON object").
    if mimetype and not _is_json(mimetype):
        return envelope(
            415,
            f"The request body must be JSON (Content-Type: application/json; got '{mimetype}')",
            type="invalid_request_error",
            code="unsupported_media_type",
        )
    limit = dorado().settings.max_json_bytes
    if request.content_length is not None and request.content_length > limit:
        return envelope(
            413,
            f"The JSON body is larger than the limit of {limit} bytes",
            type="invalid_request_error",
            code="payload_too_large",
        )
    if request.content_length is None:
        # Chunked: no length up front. Read at most one byte past the limit (werkzeug stops
        # there) and cache it for the route; more than the limit is a 413.
        request.max_content_length = limit + 1
        if len(request.get_data(cache=True)) > limit:
            return envelope(
                413,
                f"The JSON body is larger than the limit of {limit} bytes",
                type="invalid_request_error",
                code="payload_too_large",
            )
    return None


def _has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return any(_has_nul(v) for v in value)
    return False


def check_nul() -> tuple[Response, int] | None:
    """400 for a NUL character anywhere in the input: no identifier, name or text has one,
    and PostgreSQL cannot store or even compare it (it would be a 500 further in)."""
    found = "\x00" in request.path or _has_nul(list(request.args.items(multi=True)))
    if not found and request.method in MUTATING and _has_body():
        if request.mimetype in ("multipart/form-data", "application/x-www-form-urlencoded"):
            found = _has_nul(list(request.form.items(multi=True))) or any(
                _has_nul(f.filename or "") for f in request.files.values()
            )
        elif _is_json(request.mimetype or ""):
            found = _has_nul(request.get_json(silent=True))
    if not found:
        return None
    return envelope(
        400,
        "The request contains a NUL character (\\u0000), which no field accepts",
        type="invalid_request_error",
        code="invalid_value",
    )


def key_limit() -> int | None:
    """The most unrevoked keys an organization may hold (None: no limit)."""
    return dorado().settings.max_keys_per_organization or None


def _too_many(decision: Decision, whose: str) -> tuple[Response, int]:
    response, status = envelope(
        429,
        f"Rate limit reached for this {whose}: {decision.limit} requests per minute. "
        f"Retry after {header_seconds(decision.retry_after_seconds)} s.",
        type="rate_limit_error",
        code="rate_limit_exceeded",
    )
    response.headers["retry-after"] = header_seconds(decision.retry_after_seconds)
    response.headers["retry-after-ms"] = str(max(1, int(decision.retry_after_seconds * 1000)))
    return response, status


# Organization buckets share the key buckets' store under their own names.
ORG_BUCKET_PREFIX = "org:"


def init_app(app: Flask) -> None:
    """Register after ``api.auth`` (the limits are per key and org) and before idempotency."""
    settings = app.extensions["dorado"].settings
    limiter: RateLimiter | None = open_limiter(settings.rate_limit_per_minute, settings.broker_url)
    org_limiter: RateLimiter | None = open_limiter(
        settings.rate_limit_per_organization_per_minute, settings.broker_url
    )
    app.extensions["dorado_limiter"] = limiter

    @app.before_request
    def _limits():
        if not request.path.startswith("/v1/") or "api_key" not in g:
            return None
        if limiter is not None:
            decision = limiter.hit(g.api_key.id)
            g.rate_decision = decision
            if not decision.allowed:
                return _too_many(decision, "API key")
        if org_limiter is not None:
            # The organization's bucket: minting more keys does not buy more requests.
            org_decision = org_limiter.hit(ORG_BUCKET_PREFIX + g.org_id)
            if not org_decision.allowed:
                g.rate_decision = org_decision
                return _too_many(org_decision, "organization")
            if "rate_decision" not in g or org_decision.remaining < g.rate_decision.remaining:
                g.rate_decision = org_decision  # the headers show the tighter of the two
        return check_body() or check_nul()

    @app.after_request
    def _headers(response: Response) -> Response:
        decision = g.get("rate_decision")
        if decision is not None:
            _rate_headers(response, decision)
        return response
