"""The API's HTTP client for the inference service (``worker.inference.server``).

The API stays free of torch: it forwards chat completions and merge requests over HTTP,
authenticated with the platform's internal token, and passes a streamed answer through as
it arrives. The service's own errors come back in OpenAI's envelope and are relayed as they
are; an unreachable or misconfigured service becomes a 503 or a 502.
"""

from __future__ import annotations

import json
import logging
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.client import HTTPResponse
from typing import Any

from flask import Response, g
from flask.typing import ResponseReturnValue

from api.context import dorado
from api.errors import envelope
from core.tenancy.secret import internal_token

log = logging.getLogger(__name__)

# Generation on a CPU can take minutes; a merge of a large model longer still.
GENERATION_TIMEOUT_S = 600
MERGE_TIMEOUT_S = 1800
# `dorado run` starts the inference service alongside the API: wait for it to listen.
STARTUP_WAIT_S = 30
# No proxy for the internal hop, whatever HTTP(S)_PROXY says.
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class UpstreamError(Exception):
    """The inference service answered with an error (already in OpenAI's envelope)."""

    def __init__(self, status: int, body: bytes):
        super().__init__(status)
        self.status = status
        self.body = body


class InferenceUnavailable(Exception):
    """The inference service cannot be reached."""


def call_inference(path: str, payload: dict[str, Any], timeout: float) -> HTTPResponse:
    """POST ``payload`` to the inference service; the open response (the caller closes it)."""
    settings = dorado().settings
    url, token = settings.inference_base_url + path, internal_token(settings)
    data = json.dumps(payload).encode()
    deadline = time.monotonic() + STARTUP_WAIT_S
    while True:
        req = urllib.request.Request(
            url,
            data=data,
            method="POST",
            headers={
                "Content-Type": "application/json",
                "Authorization": f"Bearer {token}",
                "X-Request-Id": g.get("request_id", ""),
            },
        )
        try:
            return _opener.open(req, timeout=timeout)
        except urllib.error.HTTPError as exc:
            with exc:
                raise UpstreamError(exc.code, exc.read()) from None
        except (urllib.error.URLError, ConnectionError) as exc:
            reason = getattr(exc, "reason", exc)
            if isinstance(reason, ConnectionRefusedError) and time.monotonic() < deadline:
                time.sleep(0.5)
                continue
            log.warning("inference service at %s unreachable: %s", url, reason)
            raise InferenceUnavailable(str(reason)) from exc


def relay(upstream: HTTPResponse) -> Iterator[bytes]:
    """The upstream body, chunk by chunk as it arrives; closes the response at the end."""
    with upstream:
        while chunk := upstream.read1(64 * 1024):
            yield chunk


def error_response(exc: UpstreamError | InferenceUnavailable) -> ResponseReturnValue:
    """The answer to the API's caller when the inference service failed."""
    if isinstance(exc, UpstreamError) and exc.status == 401:
        # The caller's key is fine: the two services disagree on the platform secret.
        log.error(
            "the inference service refused the internal token: give the API and the "
            "inference service the same DORADO_SECRET_KEY"
        )
        return envelope(
            502,
            "The inference service is misconfigured",
            type="server_error",
            code="inference_error",
        )
    if isinstance(exc, UpstreamError):
        try:
            json.loads(exc.body)["error"]
            return Response(exc.body, status=exc.status, mimetype="application/json")
        except (ValueError, KeyError, TypeError):
            return envelope(
                502, "The inference service failed", type="server_error", code="inference_error"
            )
    response, status = envelope(
        503,
        "The inference service is unavailable; retry shortly",
        type="server_error",
        code="inference_unavailable",
    )
    response.headers["Retry-After"] = "5"
    return response, status
