"""A job's trained adapter as the API hands it out: where its PEFT files lie, the job that
must have one, and its merged-model download (built by the inference service)."""

from __future__ import annotations

import json

from flask.typing import ResponseReturnValue

from api.context import commit_early, db, dorado
from api.downloads import stored_object
from api.inference_client import (
    MERGE_TIMEOUT_S,
    InferenceUnavailable,
    UpstreamError,
    call_inference,
    error_response,
)
from core.db.models import Job
from core.errors import InvalidRequest
from core.jobs import lifecycle as jobs
from core.jobs.status import JobStatus
from core.storage import quota


def adapter_prefix(job_id: str) -> str:
    """Where the worker leaves a job's PEFT files (``worker.artifacts.adapter_file_key``)."""
    return f"jobs/{job_id}/adapter"


def adapter_job(org_id: str, job_id: str) -> Job:
    """The organization's job ``job_id``, which must have its final adapter."""
    job = jobs.get_job(db(), org_id, job_id)
    if job.status != JobStatus.SUCCEEDED:
        raise InvalidRequest(
            f"Job {job.id} has no final adapter (status '{job.status}')",
            param="model",
            code="adapter_not_ready",
        )
    return job


def merged_adapter_response(org_id: str, job_id: str) -> ResponseReturnValue:
    """Stream the merged model of ``job_id`` (built by the inference service on first use).

    For ``GET /v1/fine_tuning/jobs/<id>/adapter/merged`` and ``.../adapter?format=merged``.
    """
    job = adapter_job(org_id, job_id)
    store = dorado().store
    key = f"jobs/{job.id}/merged.tar.gz"
    built = False
    if not store.exists(key):
        quota.check_room_for_outputs(db(), org_id, "a merged export")
        commit_early()  # a merge can take many minutes
        payload = {
            "job_id": job.id,
            "base_model": job.model,
            "adapter": {"name": job.id, "prefix": adapter_prefix(job.id)},
        }
        try:
            with call_inference("/internal/merged", payload, MERGE_TIMEOUT_S) as upstream:
                key = json.loads(upstream.read())["key"]
        except (UpstreamError, InferenceUnavailable) as exc:
            return error_response(exc)
        built = True
    if built:  # the export counts in the organization's storage quota from now on
        quota.refresh_job_bytes(db(), store, job.id)
    return stored_object(key, f"{job.id}-merged.tar.gz", "application/gzip")
