"""OpenAPI paths and schemas of the operators' scheduling endpoints (``/v1/admin/queue``,
``/v1/admin/workers``, ``/v1/admin/jobs``), merged into ``api.openapi``'s document."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from pydantic import BaseModel, Field

from api.openapi_models import ClosedObject, OpenObject


class QueueEntry(OpenObject):
    object: Literal["queue.entry"]
    position: int | None = Field(description="1 = next to run in its pool; null: running or held")
    id: str
    status: Literal["queued", "running"]
    pool: str
    priority: int
    organization_id: str
    organization: str
    model: str
    adapter: str = Field(description="Method and rank, e.g. 'dora r16'")
    created_at: int
    age_seconds: int
    worker: str | None
    held: str | None = Field(description="Why a queued job cannot be dispatched now")
    waiting: str | None = Field(
        description="Why a multi-node job next in line cannot start yet: the free hosts it "
        "waits for (smaller jobs may pass it meanwhile)"
    )
    nodes: int = Field(description="Worker hosts the job trains on together (1: one)")
    hosts: list[str] | None = Field(
        description="A running multi-node job's gang: its hosts in node order, the first leads"
    )


class QueueList(OpenObject):
    object: Literal["list"]
    data: list[QueueEntry]
    has_more: bool


class WorkerGang(OpenObject):
    job_id: str = Field(description="The multi-node job this worker is booked into")
    node_rank: int = Field(description="Its place in the job's gang (0 leads)")
    joined: bool = Field(description="Whether it has started its part")


class WorkerObject(OpenObject):
    object: Literal["worker"]
    name: str
    state: Literal["idle", "booked", "busy", "draining", "drained", "lost", "stopped"]
    pool: str
    hostname: str
    pid: int | None
    gpus: int
    gpu_memory_mb: int | None
    current_job_id: str | None
    gang: WorkerGang | None = Field(
        description="The gang of another worker's multi-node job that this one is part of"
    )
    draining: bool
    started_at: int
    last_heartbeat_at: int
    stopped_at: int | None


class WorkerList(OpenObject):
    object: Literal["list"]
    data: list[WorkerObject]
    has_more: bool


class WorkerDeleted(OpenObject):
    object: Literal["worker.deleted"]
    name: str
    deleted: bool


class GangMember(OpenObject):
    worker: str
    node_rank: int
    state: Literal["leader", "joined", "booked"]


class AdminJob(OpenObject):
    id: str
    object: Literal["admin.fine_tuning.job"]
    status: str
    organization_id: str
    organization: str | None
    model: str
    adapter: str
    pool: str
    priority: int
    worker: str | None
    attempt: int
    retries: int
    created_at: int
    started_at: int | None
    finished_at: int | None
    fine_tuned_model: str | None
    error: dict[str, Any] | None
    latest_checkpoint_step: int | None
    nodes: int = Field(description="Worker hosts the job trains on together (1: one)")
    gang: list[GangMember] | None = Field(
        description="A running multi-node job's hosts, leader (node 0) first"
    )
    recent_events: list[str]


class PriorityRequest(ClosedObject):
    priority: int = Field(description="Higher is dispatched first; default 0")


class RequeueRequest(ClosedObject):
    pool: str | None = Field(None, description="Move the job to this worker pool")


SCHEMAS: tuple[type[BaseModel], ...] = (
    QueueList,
    WorkerList,
    WorkerDeleted,
    AdminJob,
    PriorityRequest,
    RequeueRequest,
)


def paths(
    op: Callable[..., dict[str, Any]],
    json_body: Callable[[type[BaseModel]], dict],
    path_param: Callable[[str], dict],
    query: Callable[..., dict],
) -> dict[str, Any]:
    """The paths, built with ``api.openapi``'s helpers (passed in: no import cycle)."""
    job_id, name = path_param("job_id"), path_param("name")

    def job_action(summary: str, body: type[BaseModel] | None = None) -> dict[str, Any]:
        return {
            "post": op(
                summary,
                AdminJob,
                params=[job_id],
                body=({"required": body is PriorityRequest, **json_body(body)} if body else None),
            )
        }

    return {
        "/v1/admin/queue": {
            "get": op(
                "Operators: running jobs, then queued jobs in dispatch order per pool",
                QueueList,
                params=[query("pool", {"type": "string"})],
                errors=(400, 401),
            ),
        },
        "/v1/admin/workers": {
            "get": op(
                "Operators: registered training workers",
                WorkerList,
                params=[
                    query(
                        "all",
                        {"type": "string", "enum": ["true", "false"]},
                        "include stopped workers",
                    )
                ],
                errors=(400, 401),
            ),
        },
        "/v1/admin/workers/{name}": {
            "delete": op(
                "Operators: forget a stopped or lost worker", WorkerDeleted, params=[name]
            ),
        },
        "/v1/admin/workers/{name}/drain": {
            "post": op(
                "Operators: the worker finishes its job and takes no new one",
                WorkerObject,
                params=[name],
            ),
        },
        "/v1/admin/workers/{name}/undrain": {
            "post": op("Operators: a drained worker takes jobs again", WorkerObject, params=[name]),
        },
        "/v1/admin/jobs/{job_id}": {
            "get": op("Operators: any organization's job", AdminJob, params=[job_id]),
        },
        "/v1/admin/jobs/{job_id}/cancel": job_action("Operators: cancel any job"),
        "/v1/admin/jobs/{job_id}/retry": job_action(
            "Operators: re-queue a failed or cancelled job; it resumes from its latest checkpoint"
        ),
        "/v1/admin/jobs/{job_id}/requeue": job_action(
            "Operators: put a queued or running job back in the queue, optionally in another pool",
            RequeueRequest,
        ),
        "/v1/admin/jobs/{job_id}/priority": job_action(
            "Operators: set a job's priority", PriorityRequest
        ),
        "/v1/admin/jobs/{job_id}/bump": job_action(
            "Operators: move a waiting job to the front of its pool"
        ),
    }
