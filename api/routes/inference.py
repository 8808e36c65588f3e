"""``POST /v1/chat/completions`` and the merged-model download, served by the inference service.

The route authenticates the caller, checks the model is visible to the caller's organization,
resolves an ``ft:`` name to its base model and adapter location, and forwards the request
through api.inference_client, passing a streamed answer through as it arrives.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, g, stream_with_context
from pydantic import ValidationError

from api.adapters import adapter_job, adapter_prefix, merged_adapter_response
from api.context import commit_early, db, dorado
from api.errors import pydantic_error
from api.inference_client import (
    GENERATION_TIMEOUT_S,
    InferenceUnavailable,
    UpstreamError,
    call_inference,
    error_response,
    relay,
)
from api.request_body import json_object
from api.schemas import ChatCompletionRequest
from core.catalog import lookup as catalog
from core.errors import InvalidRequest
from core.tenancy import idempotency as idempotency_records

bp = Blueprint("inference", __name__, url_prefix="/v1")

UNSUPPORTED = ("tools", "functions", "audio", "prediction", "logit_bias")


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
    max_tokens = _max_tokens(req, dorado().settings.chat_max_tokens)
    base_model, adapter = _resolve_model(g.org_id, req.model)
    commit_early()  # nothing is held open while the model generates
    payload: dict[str, Any] = {
        "model": req.model,
        "base_model": base_model,
        "adapter": adapter,
        "messages": [m.plain() for m in req.messages],
        "max_tokens": max_tokens,
        "temperature": 1.0 if req.temperature is None else req.temperature,
        "top_p": 1.0 if req.top_p is None else req.top_p,
        "stop": req.stop_list(),
        "seed": req.seed,
        "stream": bool(req.stream),
        "include_usage": bool(req.stream_options and req.stream_options.include_usage),
        # Whose turn it is: the inference service serves organizations round-robin.
        "organization": g.org_id,
    }
    try:
        upstream = call_inference("/internal/chat/completions", payload, GENERATION_TIMEOUT_S)
    except (UpstreamError, InferenceUnavailable) as exc:
        return error_response(exc)
    if not req.stream:
        with upstream:
            return Response(upstream.read(), status=200, mimetype="application/json")
    return Response(
        stream_with_context(relay(upstream)),
        mimetype="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


def _max_tokens(req: ChatCompletionRequest, cap: int) -> int | None:
    """The completion tokens asked for; above the operator's cap a 400 naming it (as OpenAI)."""
    param = "max_completion_tokens" if req.max_completion_tokens else "max_tokens"
    asked = req.max_completion_tokens or req.max_tokens
    if asked is not None and asked > cap:
        raise InvalidRequest(
            f"{param} is too large: {asked}. This server allows at most {cap} completion "
            f"tokens, whereas you provided {asked}.",
            param=param,
            code="invalid_value",
        )
    return asked


def _resolve_model(org_id: str, name: str) -> tuple[str, dict[str, str] | None]:
    """``(base model, adapter or None)`` for a model the organization may use; else NotFound."""
    model = catalog.get_visible_model(db(), org_id, name)
    if model.kind == "base":
        return model.id, None
    job = adapter_job(org_id, model.job_id or "")
    return job.model, {"name": job.id, "prefix": adapter_prefix(job.id)}


@bp.get("/fine_tuning/jobs/<job_id>/adapter/merged")
def download_merged(job_id: str):
    """The job's adapter merged into its base model: a ``.tar.gz`` Hugging Face model dir."""
    return merged_adapter_response(g.org_id, job_id)


def _release_idempotency_record() -> None:
    # A generation creates nothing to deduplicate, and a stored stream could not be replayed.
    record_id = g.pop("idempotency_record", None)
    if record_id is not None:
        idempotency_records.release(db(), record_id)
