"""OpenAPI paths and schemas of the operators' catalogue endpoints (``/v1/admin/models``,
``/v1/admin/gc``, ``/v1/admin/stats``), merged into ``api.openapi``'s document."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from pydantic import BaseModel, Field

from api.openapi_models import ClosedObject, OpenObject


class ModelUser(OpenObject):
    id: str
    status: str
    organization_id: str


class BaseModelObject(OpenObject):
    id: str
    object: Literal["model"]
    source: str | None
    builtin: bool
    created_at: int
    bytes: int = Field(description="Bytes the model takes in the object store")
    stored: bool = Field(
        description="Weights ready in the store (false: built or converted "
        "by the first worker that needs it)"
    )
    jobs: int
    active_jobs: int = Field(description="Jobs using it that have not finished")
    job_ids: list[ModelUser] | None = Field(None, description="With ?jobs=true")


class BaseModelList(OpenObject):
    object: Literal["list"]
    data: list[BaseModelObject]
    has_more: bool


class BaseModelCreate(ClosedObject):
    source: str = Field(
        description="A directory or .gguf file on the API's machine, or s3://bucket/prefix"
    )
    name: str | None = Field(None, description="Default: from the source's last component")


class BaseModelDeleted(OpenObject):
    id: str
    object: Literal["model"]
    deleted: bool
    deleted_objects: int
    cancelled_jobs: list[str]


class GcRequest(ClosedObject):
    dry_run: bool = False
    grace: str = Field("24h", description="Never delete objects younger than this (e.g. 1h)")
    keep_checkpoints: int = Field(1, ge=0)
    checkpoint_age: str = Field(
        "7d", description="Finished jobs older than this keep only keep_checkpoints checkpoints"
    )


class GcObject(OpenObject):
    key: str
    bytes: int
    reason: str


class GcCheckpoint(OpenObject):
    id: str
    job_id: str
    step: int


class GcReportObject(OpenObject):
    object: Literal["gc.report"]
    dry_run: bool
    deleted_objects: int
    deleted_bytes: int
    pruned_checkpoints: int
    scanned_objects: int
    scanned_bytes: int
    kept_young_objects: int
    kept_young_bytes: int
    objects: list[GcObject]
    checkpoints: list[GcCheckpoint]
    errors: list[str]


class Percentiles(OpenObject):
    count: int
    p50: float | None
    p90: float | None
    p99: float | None


class OrganizationUsage(OpenObject):
    organization_id: str
    name: str | None
    jobs: int
    by_status: dict[str, int]
    run_hours: float
    gpu_hours: float
    trained_tokens: int


class StatsObject(OpenObject):
    object: Literal["stats"]
    since: int
    until: int
    organization_id: str | None
    jobs: int
    jobs_by_status: dict[str, int]
    queue_wait_seconds: Percentiles
    run_time_seconds: Percentiles
    run_hours: float
    gpu_hours: float
    trained_tokens: int
    organizations: list[OrganizationUsage]


SCHEMAS: tuple[type[BaseModel], ...] = (
    ModelUser,
    BaseModelObject,
    BaseModelList,
    BaseModelCreate,
    BaseModelDeleted,
    GcRequest,
    GcObject,
    GcCheckpoint,
    GcReportObject,
    Percentiles,
    OrganizationUsage,
    StatsObject,
)


def paths(
    op: Callable[..., dict[str, Any]],
    json_body: Callable[[type[BaseModel]], dict],
    path_param: Callable[[str], dict],
    query: Callable[..., dict],
) -> dict[str, Any]:
    """The paths, built with ``api.openapi``'s helpers (passed in: no import cycle)."""
    flag = {"type": "string", "enum": ["true", "false"]}
    return {
        "/v1/admin/models": {
            "get": op(
                "Operators: base models with size and the jobs using them",
                BaseModelList,
                params=[query("jobs", flag, "also list the jobs")],
                errors=(400, 401),
            ),
            "post": op(
                "Operators: register a base model from a server-side directory or "
                ".gguf file, or an S3 prefix (copied before the answer)",
                BaseModelObject,
                body={"required": True, **json_body(BaseModelCreate)},
                errors=(400, 401),
            ),
        },
        "/v1/admin/models/{name}": {
            "delete": op(
                "Operators: remove a registered base model (built-ins stay); "
                "?force=true cancels unfinished jobs using it",
                BaseModelDeleted,
                params=[
                    path_param("name"),
                    query("force", flag, "cancel unfinished jobs using it"),
                ],
            ),
        },
        "/v1/admin/gc": {
            "post": op(
                "Operators: delete stored objects no row points to (dry_run: only report them)",
                GcReportObject,
                body={"required": False, **json_body(GcRequest)},
                errors=(400, 401),
            ),
        },
        "/v1/admin/stats": {
            "get": op(
                "Operators: jobs by status, queue wait and run time percentiles, "
                "GPU-hours and trained tokens per organization",
                StatsObject,
                params=[
                    query(
                        "since",
                        {"type": "string", "pattern": r"^\d+[smhdw]$"},
                        "period until now, e.g. 7d",
                    ),
                    query("organization_id", {"type": "string"}),
                ],
            ),
        },
    }
