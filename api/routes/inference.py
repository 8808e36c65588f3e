"""``POST /v1/chat/completions`` and the merged-model download, served by the inference service.

The API stays free of torch: it authenticates the caller, checks the model is visible to the
caller's organization, resolves an ``ft:`` name to its base model and adapter location, and
forwards the request to the inference service (``worker.inference.server``) over HTTP, passing
a streamed answer through as it arrives.
"""

from __future__ import annotations

import json
import logging
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.client import HTTPResponse
from typing import Any, Literal

from flask import Blueprint, Response, g, stream_with_context
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from api.context import commit_early, db, dorado
from api.downloads import stored_object
from api.errors import envelope, pydantic_error
from api.request_body import json_object
from core.catalog import lookup as catalog
from core.db.models import Job
from core.errors import InvalidRequest
from core.jobs import lifecycle as jobs
from core.jobs.status import JobStatus
from core.tenancy import idempotency as idempotency_records
from core.tenancy.secret import internal_token

log = logging.getLogger(__name__)

bp = Blueprint("inference", __name__, url_prefix="/v1")

# Generation on a CPU can take minutes; a merge of a large model longer still.
GENERATION_TIMEOUT_S = 600
MERGE_TIMEOUT_S = 1800
# `dorado run` starts the inference service alongside the API: wait for it to listen.
STARTUP_WAIT_S = 30
# No proxy for the internal hop, whatever HTTP(S)_PROXY says.
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class _TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    """One message; content parts must be text (this service has no vision or audio)."""

    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[_TextPart] | None = None

    def plain(self) -> dict[str, str]:
        content = self.content
        if isinstance(content, list):
            content = "".join(part.text for part in content)
        # Chat templates know "system"; OpenAI's newer "developer" role means the same here.
        role = "system" if self.role == "developer" else self.role
        return {"role": role, "content": content or ""}


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    """The subset of OpenAI's chat completion request that Dorado serves."""

    model_config = ConfigDict(extra="ignore")
    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    # Accepted so that clients sending them keep working; they change nothing here.
    user: str | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None

    @field_validator("n")
    @classmethod
    def _one_choice(cls, value: int | None) -> int | None:
        if value not in (None, 1):
            raise ValueError("only n=1 is supported")
        return value

    @field_validator("stop")
    @classmethod
    def _stop(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list) and len(value) > 4:
            raise ValueError("at most 4 stop sequences")
        return value

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)


UNSUPPORTED = ("tools", "functions", "audio", "prediction", "logit_bias")


class UpstreamError(Exception):
    """The inference service answered with an error (already in OpenAI's envelope)."""

    def __init__(self, status: int, body: bytes):
        super().__init__(status)
        self.status = status
        self.body = body


class InferenceUnavailable(Exception):
    """The inference service cannot be reached."""


def adapter_prefix(job_id: str) -> str:
    """Where the worker leaves a job's PEFT files (``worker.artifacts.adapter_file_key``)."""
    return f"jobs/{job_id}/adapter"


def resolve_model(org_id: str, name: str) -> tuple[str, dict[str, str] | None]:
    """``(base model, adapter or None)`` for a model the organization may use; else NotFound."""
    session = db()
    model = catalog.get_visible_model(session, org_id, name)
    if model.kind == "base":
        return model.id, None
    job = _adapter_job(org_id, model.job_id or "")
    return job.model, {"name": job.id, "prefix": adapter_prefix(job.id)}


def _adapter_job(org_id: str, job_id: str) -> Job:
    job = jobs.get_job(db(), org_id, job_id)
    if job.status != JobStatus.SUCCEEDED:
        raise InvalidRequest(
            f"Job {job.id} has no final adapter (status '{job.status}')",
            param="model",
            code="adapter_not_ready",
        )
    return job


@bp.post("/chat/completions")
def chat_completions():
    """OpenAI's chat completions for base models and the caller's ``ft:`` models."""
    body = json_object()
    _release_idempotency_record()
    for name in UNSUPPORTED:
        if body.get(name):
            raise InvalidRequest(
                f"'{name}' is not supported by this server",
                param=name,
                code="unsupported_parameter",
            )
    if body.get("logprobs"):
        raise InvalidRequest(
            "'logprobs' is not supported by this server",
            param="logprobs",
            code="unsupported_parameter",
        )
    try:
        req = ChatCompletionRequest.model_validate(body)
    except ValidationError as exc:
        return pydantic_error(exc)
    base_model, adapter = resolve_model(g.org_id, req.model)
    commit_early()  # nothing is held open while the model generates
    payload: dict[str, Any] = {
        "model": req.model,
        "base_model": base_model,
        "adapter": adapter,
        "messages": [m.plain() for m in req.messages],
        "max_tokens": req.max_completion_tokens or req.max_tokens,
        "temperature": 1.0 if req.temperature is None else req.temperature,
        "top_p": 1.0 if req.top_p is None else req.top_p,
        "stop": req.stop_list(),
        "seed": req.seed,
        "stream": bool(req.stream),
        "include_usage": bool(req.stream_options and req.stream_options.include_usage),
    }
    try:
        upstream = call_inference("/internal/chat/completions", payload, GENERATION_TIMEOUT_S)
    except (UpstreamError, InferenceUnavailable) as exc:
        return _error_response(exc)
    if not req.stream:
        with upstream:
            return Response(upstream.read(), status=200, mimetype="application/json")
    return Response(
        stream_with_context(_relay(upstream)),
        mimetype="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


@bp.get("/fine_tuning/jobs/<job_id>/adapter/merged")
def download_merged(job_id: str):
    """The job's adapter merged into its base model: a ``.tar.gz`` Hugging Face model dir."""
    return merged_adapter_response(g.org_id, job_id)


def merged_adapter_response(org_id: str, job_id: str) -> Response:
    """Stream the merged model of ``job_id`` (built by the inference service on first use).

    For ``GET /v1/fine_tuning/jobs/<id>/adapter?format=merged`` in ``api.routes.jobs``.
    """
    job = _adapter_job(org_id, job_id)
    commit_early()  # a merge can take many minutes
    store = dorado().store
    key = f"jobs/{job.id}/merged.tar.gz"
    if not store.exists(key):
        payload = {
            "job_id": job.id,
            "base_model": job.model,
            "adapter": {"name": job.id, "prefix": adapter_prefix(job.id)},
        }
        try:
            with call_inference("/internal/merged", payload, MERGE_TIMEOUT_S) as upstream:
                key = json.loads(upstream.read())["key"]
        except (UpstreamError, InferenceUnavailable) as exc:
            return _error_response(exc)
    return stored_object(key, f"{job.id}-merged.tar.gz", "application/gzip")


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


def _relay(upstream: HTTPResponse) -> Iterator[bytes]:
    with upstream:
        while chunk := upstream.read1(64 * 1024):
            yield chunk


def _error_response(exc: UpstreamError | InferenceUnavailable):
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


def _release_idempotency_record() -> None:
    # A generation creates nothing to deduplicate, and a stored stream could not be replayed.
    record_id = g.pop("idempotency_record", None)
    if record_id is not None:
        idempotency_records.release(db(), record_id)
