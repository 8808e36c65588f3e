"""The inference service's internal HTTP API (a small WSGI app; run it in ONE process).

Only the Dorado API talks to it, on a private address. Every ``/internal`` request must carry
the internal token derived from the platform secret (``core.tenancy.secret.internal_token``),
so that nothing else on the network can run or download another organization's adapter; past
that it trusts its caller, which has already authenticated the user, checked the model belongs
to the user's organization and validated the parameters. Endpoints:

``POST /internal/chat/completions``
    ``{"model", "base_model", "adapter": {"name", "prefix"} | null, "messages", "max_tokens",
    "temperature", "top_p", "stop", "seed", "stream", "include_usage", "organization"}`` -> an
    OpenAI ``chat.completion``, or with ``stream`` its ``chat.completion.chunk`` server-sent
    events. ``organization`` (the caller's organization id) is whose turn the request takes:
    organizations are served round-robin.
``POST /internal/merged``
    ``{"job_id", "base_model", "adapter": {"name", "prefix"}}`` -> ``{"key", "bytes"}``: the
    object-store key of the merged model (built on first use).
``GET /healthz``
    liveness and how many adapters are attached; their names (organizations' fine-tuned
    models) only to a caller holding the internal token.

Run: ``gunicorn --workers 1 --threads 8 'worker.inference.server:create_app()'`` (``dorado run``
starts it). One process, because each process would hold its own copy of every model.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections.abc import Iterator
from typing import Any

from flask import Flask, Response, jsonify, request, stream_with_context

from core.settings import Settings, load_settings
from core.storage.objects import open_store
from core.tenancy.secret import internal_token_ok
from worker.inference.adapters import AdapterRef, AdapterUnavailable
from worker.inference.engine import Completion, GenerationParams, InferenceEngine, PromptTooLong
from worker.startup import prepare_worker_process

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None, engine: InferenceEngine | None = None) -> Flask:
    """The inference app; models load lazily on the first request that needs them."""
    from core.observability.logconfig import configure_logging

    settings = settings or load_settings()
    if engine is None:
        configure_logging()
        # Before the engine imports transformers and peft (they read it on import).
        prepare_worker_process()
        engine = InferenceEngine(
            settings,
            open_store(settings),
            adapter_cache_size=settings.adapter_cache_size,
            adapter_dir=settings.home / "cache" / "adapters",
        )
    app = Flask(__name__)
    app.extensions["dorado_inference"] = engine

    @app.before_request
    def _internal_only():
        if request.path.startswith("/internal/") and not internal_token_ok(
            settings, request.headers.get("Authorization")
        ):
            return _error(
                401, "This endpoint serves the Dorado API only.", "invalid_internal_token"
            )
        return None

    @app.get("/healthz")
    def healthz():
        # Probes and anyone on the private network see counts; which organizations' models
        # are loaded is the API's business only.
        adapters = engine.loaded_adapters()
        body: dict[str, Any] = {"status": "ok", "adapters_loaded": len(adapters)}
        if internal_token_ok(settings, request.headers.get("Authorization")):
            body["adapters"] = adapters
        return body

    @app.post("/internal/chat/completions")
    def chat_completions():
        body = request.get_json(force=True)
        adapter = _adapter(body.get("adapter"))
        params = GenerationParams(
            messages=body["messages"],
            max_tokens=body.get("max_tokens"),
            temperature=float(body.get("temperature", 1.0)),
            top_p=float(body.get("top_p", 1.0)),
            stop=tuple(body.get("stop") or ()),
            seed=body.get("seed"),
        )
        completion_id = f"chatcmpl-{secrets.token_hex(12)}"
        created = int(time.time())
        model = body.get("model") or body["base_model"]
        organization = str(body.get("organization") or "")
        if not body.get("stream"):
            result = engine.complete(body["base_model"], adapter, params, organization=organization)
            return completion_object(completion_id, created, model, result)
        pieces = engine.stream(body["base_model"], adapter, params, organization=organization)
        # Pull the first piece now: a model or adapter that cannot load is still an HTTP
        # error, not a 200 stream that breaks off.
        first = next(pieces)
        events = sse_events(
            completion_id,
            created,
            model,
            first,
            pieces,
            include_usage=bool(body.get("include_usage")),
        )
        return Response(
            stream_with_context(events),
            mimetype="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    @app.post("/internal/merged")
    def merged():
        from worker.inference.merge import ensure_merged

        body = request.get_json(force=True)
        ref = _adapter(body.get("adapter"))
        if ref is None:
            return _error(400, "A merge needs an adapter", "missing_adapter", "adapter")
        base_dir = engine.model_dir(body["base_model"])
        key = ensure_merged(engine.store, base_dir, engine.adapter_dir, ref, body["job_id"])
        return {"key": key, "bytes": engine.store.size(key)}

    @app.errorhandler(PromptTooLong)
    def _too_long(exc: PromptTooLong):
        return _error(400, str(exc), "context_length_exceeded", "messages")

    @app.errorhandler(AdapterUnavailable)
    def _no_adapter(exc: AdapterUnavailable):
        return _error(
            404,
            f"The fine-tuned model's adapter is unavailable: {exc}",
            "adapter_unavailable",
            "model",
        )

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):
        from werkzeug.exceptions import HTTPException

        if isinstance(exc, HTTPException):
            return _error(exc.code or 500, exc.description or exc.name, "http_error")
        from worker.model_store import ModelUnavailable

        if isinstance(exc, ModelUnavailable):
            return _error(404, str(exc), "model_not_found", "model")
        log.exception("inference failed")
        return _error(
            500,
            f"Inference failed: {type(exc).__name__}: {exc}",
            "inference_error",
            type="server_error",
        )

    return app


def _adapter(spec: dict[str, Any] | None) -> AdapterRef | None:
    return None if not spec else AdapterRef(name=spec["name"], prefix=spec["prefix"])


def _error(
    status: int,
    message: str,
    code: str,
    param: str | None = None,
    *,
    type: str = "invalid_request_error",
):
    body = {"error": {"message": message, "type": type, "param": param, "code": code}}
    return jsonify(body), status


def usage(result: Completion) -> dict[str, int]:
    """OpenAI's ``usage`` object."""
    return {
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": result.completion_tokens,
        "total_tokens": result.prompt_tokens + result.completion_tokens,
    }


def completion_object(
    completion_id: str, created: int, model: str, result: Completion
) -> dict[str, Any]:
    """A non-streamed ``chat.completion``."""
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": result.text, "refusal": None},
                "logprobs": None,
                "finish_reason": result.finish_reason,
            }
        ],
        "usage": usage(result),
        # No system_fingerprint: OpenAI's spec types it as a string, so it is omitted, not null.
    }


def sse_events(
    completion_id: str,
    created: int,
    model: str,
    first: str | Completion,
    rest: Iterator[str | Completion],
    *,
    include_usage: bool,
) -> Iterator[str]:
    """``chat.completion.chunk`` events: role, content deltas, finish_reason, ``[DONE]``."""

    def chunk(delta: dict[str, Any], finish: str | None, **extra: Any) -> str:
        body = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
            **extra,
        }
        return f"data: {json.dumps(body)}\n\n"

    yield chunk({"role": "assistant", "content": ""}, None)
    try:
        item = first
        while True:
            if isinstance(item, Completion):
                yield chunk({}, item.finish_reason)
                if include_usage:
                    body = {
                        "id": completion_id,
                        "object": "chat.completion.chunk",
                        "created": created,
                        "model": model,
                        "choices": [],
                        "usage": usage(item),
                    }
                    yield f"data: {json.dumps(body)}\n\n"
                break
            if item:
                yield chunk({"content": item}, None)
            item = next(rest)
    except Exception as exc:
        log.exception("generation failed mid-stream")
        error = {
            "error": {
                "message": f"Inference failed: {exc}",
                "type": "server_error",
                "param": None,
                "code": "inference_error",
            }
        }
        yield f"data: {json.dumps(error)}\n\n"
        return
    finally:
        close = getattr(rest, "close", None)
        if close is not None:
            close()
    yield "data: [DONE]\n\n"
