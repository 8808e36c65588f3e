"""The OpenAPI 3.1 document of the API, built from pydantic models (served at
``/v1/openapi.json`` and rendered for people at ``/docs``)."""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Literal

from pydantic import BaseModel, Field

from api.openapi_models import OpenObject, omittable
from api.schemas import Integration, JobCreateRequest


class ErrorBody(OpenObject):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorEnvelope(OpenObject):
    error: ErrorBody


class FileObject(OpenObject):
    id: str
    object: Literal["file"]
    bytes: int
    created_at: int
    filename: str
    purpose: str
    status: Literal["uploaded", "processed", "error"]
    # OpenAI types these as non-null: omitted when there is none.
    status_details: str = omittable("Why processing failed; omitted if it did not")
    expires_at: int = omittable("Omitted: Dorado's files do not expire")
    example_count: int | None = Field(None, description="Dorado: valid examples in the file")
    statistics: dict[str, Any] | None = Field(None, description="Dorado: validation statistics")


class FileList(OpenObject):
    object: Literal["list"]
    data: list[FileObject]
    has_more: bool
    first_id: str | None
    last_id: str | None


class Deleted(OpenObject):
    id: str
    object: str
    deleted: bool


class JobError(OpenObject):
    code: str
    message: str
    param: str | None


class Hyperparameters(OpenObject):
    n_epochs: int | Literal["auto"]
    batch_size: int | Literal["auto"]
    learning_rate_multiplier: float | Literal["auto"]


class JobResources(OpenObject):
    """The memory planner's verdict on a job (core/jobs/planner.py)."""

    gpus: int
    sharding: Literal["ddp", "fsdp"] = Field(
        "ddp",
        description="How the job's GPUs share the model: ddp (each holds all of it) or fsdp "
        "(decoder layers and adapter state split across them), chosen when no single GPU fits",
    )
    estimated_peak_mib_per_device: int
    gradient_checkpointing: bool
    quantization: str | None
    tokens_per_micro_batch: int
    trainable_parameters: int
    breakdown_mib: dict[str, int] = Field(
        description="weights, adapter (with gradients and AdamW state), activations, logits, "
        "headroom (CUDA context and fragmentation), MiB each"
    )
    pool: str
    pool_gpu_memory_mib: int | None


class DpoHyperparametersObject(Hyperparameters):
    beta: float | Literal["auto"]


class SupervisedSettings(OpenObject):
    hyperparameters: Hyperparameters


class DpoSettings(OpenObject):
    hyperparameters: DpoHyperparametersObject


class MethodObject(OpenObject):
    """The job's method: its type and the settings of that type only (none is ``null``)."""

    type: Literal["supervised", "dpo", "reinforcement"]
    supervised: SupervisedSettings = omittable("Present when type is supervised")
    dpo: DpoSettings = omittable("Present when type is dpo")


class JobObject(OpenObject):
    id: str
    object: Literal["fine_tuning.job"]
    created_at: int
    finished_at: int | None
    model: str
    fine_tuned_model: str | None
    organization_id: str
    status: Literal[
        "validating_files", "queued", "running", "succeeded", "failed", "cancelled", "paused"
    ]
    error: JobError | None
    hyperparameters: Hyperparameters
    method: MethodObject
    training_file: str
    validation_file: str | None
    result_files: list[str]
    trained_tokens: int | None
    seed: int
    suffix: str | None
    metadata: dict[str, str] | None
    estimated_finish: int | None
    integrations: list[Integration] = Field(
        description="Experiment trackers the run is logged to (wandb as OpenAI; mlflow)"
    )
    adapter: dict[str, Any] = Field(description="Dorado: the adapter trained (LoRA or DoRA)")
    resources: JobResources | None = Field(
        None,
        description="Dorado: GPUs and estimated peak memory per device; null when the base "
        "model's architecture is unknown",
    )
    parent: str | None = Field(
        description="Dorado: the fine-tuned model (ft:...) this job continues, whose adapter "
        "it started from; null for a job on a base model"
    )
    parent_job_id: str | None = Field(
        description="Dorado: the id of the job that produced `parent`; null with it"
    )


class JobList(OpenObject):
    object: Literal["list"]
    data: list[JobObject]
    has_more: bool


class EventObject(OpenObject):
    id: str
    object: Literal["fine_tuning.job.event"]
    created_at: int
    level: Literal["info", "warn", "error"]
    message: str
    type: Literal["message", "metrics"]
    data: dict[str, Any] = omittable("Metrics events only; omitted otherwise")


class EventList(OpenObject):
    object: Literal["list"]
    data: list[EventObject]
    has_more: bool


class CheckpointMetrics(OpenObject):
    step: float | None = None
    train_loss: float | None = None
    train_mean_token_accuracy: float | None = None
    # Omitted where no validation ran (OpenAI types them as numbers).
    valid_loss: float = omittable("Sampled validation loss")
    valid_mean_token_accuracy: float = omittable("Sampled validation token accuracy")
    full_valid_loss: float = omittable("Full validation loss (epoch ends)")
    full_valid_mean_token_accuracy: float = omittable("Full validation token accuracy")


class CheckpointObject(OpenObject):
    id: str
    object: Literal["fine_tuning.job.checkpoint"]
    created_at: int
    fine_tuned_model_checkpoint: str
    fine_tuning_job_id: str
    step_number: int
    metrics: CheckpointMetrics


class CheckpointList(OpenObject):
    object: Literal["list"]
    data: list[CheckpointObject]
    has_more: bool
    first_id: str | None
    last_id: str | None


class ModelObject(OpenObject):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str
    shutdown_date: int | None = None


class ModelList(OpenObject):
    object: Literal["list"]
    data: list[ModelObject]
    has_more: bool


SCHEMAS: tuple[type[BaseModel], ...] = (
    ErrorEnvelope,
    FileObject,
    FileList,
    Deleted,
    JobObject,
    JobList,
    EventObject,
    EventList,
    CheckpointObject,
    CheckpointList,
    ModelObject,
    ModelList,
    JobCreateRequest,
)


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _json(model: type[BaseModel]) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": _ref(model)}}}


# Every route may answer these: input no field accepts (400: a NUL character), a key lacking
# the scope (403), the per-key rate limit (429); a route with a body also an oversized (413)
# or wrongly typed (415) body.
COMMON_ERRORS = (400, 401, 403, 429)
BODY_ERRORS = (413, 415)


def _op(
    summary: str,
    ok: type[BaseModel] | dict[str, Any],
    *,
    params: list | None = None,
    body: dict | None = None,
    errors: tuple[int, ...] = (400, 401, 404),
) -> dict[str, Any]:
    responses: dict[str, Any] = {
        "200": {"description": "OK", **(_json(ok) if isinstance(ok, type) else ok)}
    }
    for status in sorted(set(errors) | set(COMMON_ERRORS) | (set(BODY_ERRORS) if body else set())):
        responses[str(status)] = {"description": "Error", **_json(ErrorEnvelope)}
    op: dict[str, Any] = {"summary": summary, "responses": responses, "parameters": params or []}
    if body:
        op["requestBody"] = body
    return op


def _path_param(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}


def _query(name: str, schema: dict[str, Any], description: str = "") -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "schema": schema,
        "description": description,
    }


LIMIT = {"type": "integer", "minimum": 1, "maximum": 100}
BINARY = {
    "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}
}
GZIP = {"content": {"application/gzip": {"schema": {"type": "string", "format": "binary"}}}}
# A merged download goes through the inference service: 502 when it refuses the API's token
# or fails, 503 while it is unreachable.
MERGED_ERRORS = (400, 401, 404, 502, 503)


@lru_cache(maxsize=1)
def build_openapi() -> dict[str, Any]:
    """The whole API as an OpenAPI 3.1 document."""
    from api import (
        openapi_catalog,
        openapi_integrations,
        openapi_queue,
        openapi_security,
        openapi_webhooks,
    )

    schemas: dict[str, Any] = {}
    for model in (
        SCHEMAS
        + openapi_security.SCHEMAS
        + openapi_catalog.SCHEMAS
        + openapi_queue.SCHEMAS
        + openapi_webhooks.SCHEMAS
        + openapi_integrations.SCHEMAS
    ):
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
    job_id, file_id = _path_param("fine_tuning_job_id"), _path_param("file_id")
    upload = {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file", "purpose"],
                    "properties": {
                        "file": {"type": "string", "format": "binary"},
                        "purpose": {"type": "string", "enum": ["fine-tune"]},
                    },
                }
            }
        },
    }
    paths = {
        "/v1/files": {
            "post": _op(
                "Upload a JSONL training file (validated line by line)",
                FileObject,
                body=upload,
                errors=(400, 401, 413),
            ),
            "get": _op(
                "List files, newest first",
                FileList,
                params=[
                    _query("purpose", {"type": "string"}),
                    _query("order", {"type": "string", "enum": ["asc", "desc"]}),
                    _query("after", {"type": "string"}),
                    _query("limit", {"type": "integer", "minimum": 1, "maximum": 10000}),
                ],
                errors=(400, 401),
            ),
        },
        "/v1/files/{file_id}": {
            "get": _op("Retrieve a file", FileObject, params=[file_id]),
            "delete": _op("Delete a file", Deleted, params=[file_id]),
        },
        "/v1/files/{file_id}/content": {
            "get": _op("The file's raw bytes", BINARY, params=[file_id]),
        },
        "/v1/fine_tuning/jobs": {
            "post": _op(
                "Create a fine-tuning job",
                JobObject,
                body={"required": True, **_json(JobCreateRequest)},
            ),
            "get": _op(
                "List jobs, newest first",
                JobList,
                params=[
                    _query("after", {"type": "string"}),
                    _query("limit", LIMIT),
                    _query(
                        "status",
                        {
                            "type": "string",
                            "enum": [
                                "validating_files",
                                "queued",
                                "running",
                                "paused",
                                "succeeded",
                                "failed",
                                "cancelled",
                            ],
                        },
                        "Dorado extra: only jobs in this status",
                    ),
                    {
                        "name": "metadata",
                        "in": "query",
                        "required": False,
                        "style": "deepObject",
                        "explode": True,
                        "schema": {"type": "object", "additionalProperties": {"type": "string"}},
                    },
                ],
                errors=(400, 401),
            ),
        },
        "/v1/fine_tuning/jobs/{fine_tuning_job_id}": {
            "get": _op("Retrieve a job", JobObject, params=[job_id]),
        },
        "/v1/fine_tuning/jobs/{fine_tuning_job_id}/cancel": {
            "post": _op("Cancel a queued, running or paused job", JobObject, params=[job_id]),
        },
        "/v1/fine_tuning/jobs/{fine_tuning_job_id}/pause": {
            "post": _op(
                "Pause a job (running jobs pause after a checkpoint)", JobObject, params=[job_id]
            ),
        },
        "/v1/fine_tuning/jobs/{fine_tuning_job_id}/resume": {
            "post": _op("Resume a paused job from its last checkpoint", JobObject, params=[job_id]),
        },
        "/v1/fine_tuning/jobs/{fine_tuning_job_id}/events": {
            "get": _op(
                "A job's events, newest first",
                EventList,
                params=[job_id, _query("after", {"type": "string"}), _query("limit", LIMIT)],
            ),
        },
        "/v1/fine_tuning/jobs/{fine_tuning_job_id}/checkpoints": {
            "get": _op(
                "A job's checkpoints, newest step first",
                CheckpointList,
                params=[job_id, _query("after", {"type": "string"}), _query("limit", LIMIT)],
            ),
        },
        "/v1/fine_tuning/jobs/{fine_tuning_job_id}/adapter": {
            "get": _op(
                "Download the adapter (.tar.gz, PEFT layout); ?checkpoint=<id> for a checkpoint's",
                GZIP,
                params=[
                    job_id,
                    _query("checkpoint", {"type": "string"}),
                    _query(
                        "format",
                        {"type": "string", "enum": ["peft", "merged"], "default": "peft"},
                        "merged: the final adapter merged into the base weights, as "
                        "/adapter/merged",
                    ),
                ],
                errors=MERGED_ERRORS,
            ),
        },
        "/v1/fine_tuning/jobs/{fine_tuning_job_id}/adapter/merged": {
            "get": _op(
                "Download the final adapter merged into its base model (.tar.gz of a Hugging "
                "Face model directory; built by the inference service on first use)",
                GZIP,
                params=[job_id],
                errors=MERGED_ERRORS,
            ),
        },
        "/v1/chat/completions": {
            "post": _op(
                "Chat completion from a base model or one of your ft: models "
                "(stream=true for server-sent events)",
                {
                    "content": {
                        "application/json": {"schema": {"type": "object"}},
                        "text/event-stream": {"schema": {"type": "string"}},
                    }
                },
                body={
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["model", "messages"],
                                "properties": {
                                    "model": {"type": "string"},
                                    "messages": {"type": "array"},
                                },
                            }
                        }
                    },
                },
                errors=(400, 401, 404, 503),
            ),
        },
        "/v1/models": {
            "get": _op("Base models and your fine-tuned models", ModelList, errors=(401,))
        },
        "/v1/models/{model}": {
            "get": _op("Retrieve a model", ModelObject, params=[_path_param("model")]),
            "delete": _op(
                "Delete a fine-tuned model",
                Deleted,
                params=[_path_param("model")],
                errors=(401, 403, 404),
            ),
        },
    }
    paths.update(openapi_security.paths(_op, _json, _path_param, _query))
    paths.update(openapi_catalog.paths(_op, _json, _path_param, _query))
    paths.update(openapi_queue.paths(_op, _json, _path_param, _query))
    paths.update(openapi_webhooks.paths(_op, _json, _path_param, _query))
    paths.update(openapi_integrations.paths(_op, _json, _path_param, _query))
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Dorado API",
            "version": "1",
            "description": "OpenAI-compatible fine-tuning API (LoRA and DoRA adapters).",
        },
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }
