"""ORM rows -> OpenAI wire objects (unix-second timestamps, OpenAI field names)."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from core.db.models import Checkpoint, File, Job, JobEvent, Model
from core.jobs.checkpoints import checkpoint_model_name
from core.jobs.progress import progress_fields
from core.jobs.status import JobStatus
from core.timeutil import to_unix


def _without_nulls(obj: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    """``obj`` minus those ``keys`` whose value is None: OpenAI's spec types them as non-null
    (string, object, number), so strict generated clients reject a ``null`` there."""
    return {k: v for k, v in obj.items() if not (k in keys and v is None)}


def file_object(row: File) -> dict[str, Any]:
    body = {
        "id": row.id,
        "object": "file",
        "bytes": row.bytes,
        "created_at": to_unix(row.created_at),
        "filename": row.filename,
        "purpose": row.purpose,
        "status": row.status,
        "status_details": row.status_details,
        "expires_at": None,
        # Extra fields (the SDK keeps them in model_extra): what validation found.
        "example_count": row.example_count,
        "statistics": row.stats,
    }
    return _without_nulls(body, ("status_details", "expires_at"))


def job_object(job: Job) -> dict[str, Any]:
    return {
        "id": job.id,
        "object": "fine_tuning.job",
        "created_at": to_unix(job.created_at),
        "finished_at": to_unix(job.finished_at),
        "model": job.model,
        "fine_tuned_model": job.fine_tuned_model,
        "organization_id": job.organization_id,
        "status": job.status,
        "error": job.error,
        "hyperparameters": job.hyperparameters,
        # Only the settings object of the method's type: OpenAI's spec has no null for the others.
        "method": dict(job.method or {"type": "supervised"}),
        "training_file": job.training_file,
        "validation_file": job.validation_file,
        "result_files": job.result_files or [],
        "trained_tokens": job.trained_tokens,
        "seed": job.seed,
        "suffix": job.suffix,
        "metadata": job.user_metadata,
        "estimated_finish": to_unix(job.estimated_finish)
        if job.status == JobStatus.RUNNING
        else None,
        "integrations": job.integrations or [],
        # Dorado extras.
        "adapter": job.adapter,
        "serving": serving_engines(job.adapter),
        "pause_requested": job.pause_requested,
        "options": job.options or {},
        # The memory planner's verdict: GPUs, estimated peak MiB per device, its terms.
        "resources": job.resources,
        # Continued fine-tuning: the fine-tuned model this job's adapter started from.
        "parent": (job.options or {}).get("parent"),
        "parent_job_id": (job.options or {}).get("parent_job_id"),
        "validation": job.validation,
        # Dashboard extras: {"step", "total_steps", "percent"} or None; 1-based or None.
        **progress_fields(job),
    }


def serving_engines(adapter: dict[str, Any] | None) -> dict[str, bool]:
    """Engines that load the adapter as is; vLLM and LoRAX cannot load DoRA unmerged."""
    dora = (adapter or {}).get("type", "dora") == "dora"
    return {
        "peft": True,
        "dorado": True,
        "vllm": not dora,
        "lorax": not dora,
        "merged_required": dora,
    }


def event_object(event: JobEvent) -> dict[str, Any]:
    body = {
        "id": event.id,
        "object": "fine_tuning.job.event",
        "created_at": to_unix(event.created_at),
        "level": event.level,
        "message": event.message,
        "type": event.type,
        "data": event.data,
    }
    return _without_nulls(body, ("data",))


def checkpoint_object(session: Session, job: Job, row: Checkpoint) -> dict[str, Any]:
    metrics = dict(row.metrics or {})
    return {
        "id": row.id,
        "object": "fine_tuning.job.checkpoint",
        "created_at": to_unix(row.created_at),
        "fine_tuned_model_checkpoint": checkpoint_model_name(session, job, row.step_number),
        "fine_tuning_job_id": job.id,
        "step_number": row.step_number,
        "metrics": {
            "step": float(row.step_number),
            **{k: v for k, v in metrics.items() if k != "step" and v is not None},
        },
        # Dorado extras.
        "epoch": row.epoch,
        "reason": row.reason,
    }


def model_object(model: Model) -> dict[str, Any]:
    return {
        "id": model.id,
        "object": "model",
        "created": to_unix(model.created_at),
        "owned_by": model.owned_by,
        "shutdown_date": None,
    }


def page(data: list[dict[str, Any]], has_more: bool, *, ids: bool = False) -> dict[str, Any]:
    body: dict[str, Any] = {"object": "list", "data": data, "has_more": has_more}
    if ids:
        body["first_id"] = data[0]["id"] if data else None
        body["last_id"] = data[-1]["id"] if data else None
    return body
