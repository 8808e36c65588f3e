"""``/v1/fine_tuning/jobs``: create, list, retrieve, cancel, events, adapter download."""

from __future__ import annotations

from flask import Blueprint, g, request

from api.adapters import merged_adapter_response
from api.audit import audit_request
from api.context import db, dorado
from api.downloads import stored_object
from api.pagination import after_arg, limit_arg
from api.request_body import json_object
from api.schemas import JobCreateRequest
from api.serializers import checkpoint_object, event_object, job_object, page
from core.db.models import Job
from core.errors import InvalidRequest
from core.jobs import checkpoints
from core.jobs import lifecycle as jobs
from core.jobs.hyperparams import check_operator_caps
from core.jobs.inputs import check_trainable
from core.jobs.status import JobStatus
from core.scheduling.wakeups import commit_and_publish
from core.storage import quota
from core.tenancy.tracker_credentials import check_integrations_usable

bp = Blueprint("jobs", __name__, url_prefix="/v1/fine_tuning/jobs")


@bp.post("")
def create_job():
    # A ValidationError becomes the 400 envelope in api.errors.
    req = JobCreateRequest.model_validate(json_object())
    check_trainable(req.method_type)
    check_operator_caps(req.options(), max_job_seconds=dorado().settings.max_job_seconds)
    quota.check_room_for_outputs(db(), g.org_id, "a new job")
    new = jobs.NewJob(
        model=req.model,
        training_file=req.training_file,
        validation_file=req.validation_file,
        hyperparameters=req.resolved_hyperparameters(),
        method=req.method_type,
        adapter=req.adapter if "adapter" in req.model_fields_set else None,
        seed=req.seed,
        suffix=req.suffix,
        metadata=req.metadata,
        options=req.options(),
        integrations=req.integration_dicts(),
        training=req.training,
    )
    check_integrations_usable(db(), g.org_id, new.integrations, dorado().settings)
    job = jobs.create_job(db(), g.org_id, new, dorado().settings.declared_pools)
    _commit_and_publish(job)
    return job_object(job)


def _commit_and_publish(job: Job) -> None:
    """The job is committed together with the request's audit entry, then its worker woken."""
    audit_request(job.id)
    commit_and_publish(db(), dorado().settings, [job])


@bp.get("")
def list_jobs():
    metadata = {
        key[len("metadata[") : -1]: value
        for key, value in request.args.items()
        if key.startswith("metadata[") and key.endswith("]")
    }
    rows, has_more = jobs.list_jobs(
        db(),
        g.org_id,
        limit=limit_arg(20),
        after=after_arg(),
        metadata=metadata or None,
        status=request.args.get("status") or None,
    )
    return page([job_object(j) for j in rows], has_more)


@bp.get("/<job_id>")
def retrieve_job(job_id: str):
    return job_object(jobs.read_job(db(), g.org_id, job_id))


@bp.post("/<job_id>/cancel")
def cancel_job(job_id: str):
    return job_object(jobs.cancel_job(db(), g.org_id, job_id))


@bp.post("/<job_id>/pause")
def pause_job(job_id: str):
    return job_object(jobs.pause_job(db(), g.org_id, job_id))


@bp.post("/<job_id>/resume")
def resume_job(job_id: str):
    quota.check_room_for_outputs(db(), g.org_id, "a resumed job")
    job = jobs.resume_job(db(), g.org_id, job_id)
    _commit_and_publish(job)
    return job_object(job)


@bp.get("/<job_id>/checkpoints")
def list_checkpoints(job_id: str):
    session = db()
    job = jobs.get_job(session, g.org_id, job_id)
    rows, has_more = checkpoints.list_checkpoints(
        session, job, limit=limit_arg(10), after=after_arg()
    )
    return page([checkpoint_object(session, job, c) for c in rows], has_more, ids=True)


@bp.get("/<job_id>/events")
def list_events(job_id: str):
    job = jobs.get_job(db(), g.org_id, job_id)
    rows, has_more = jobs.list_events(db(), job, limit=limit_arg(20), after=after_arg())
    return page([event_object(e) for e in rows], has_more)


@bp.get("/<job_id>/adapter")
def download_adapter(job_id: str):
    """The trained adapter as ``.tar.gz`` (adapter_config.json + adapter_model.safetensors)."""
    job = jobs.get_job(db(), g.org_id, job_id)
    fmt = request.args.get("format", "peft")
    if fmt not in ("peft", "merged"):
        raise InvalidRequest(
            "format must be 'peft' (the adapter) or 'merged' (merged into the base weights)",
            param="format",
            code="invalid_format",
        )
    if fmt == "merged":
        return merged_adapter_response(g.org_id, job.id)  # the final adapter only
    checkpoint_id = request.args.get("checkpoint")
    if checkpoint_id:
        ckpt = checkpoints.get_checkpoint(db(), job, checkpoint_id)
        key, filename = ckpt.adapter_key, f"{job.id}-step-{ckpt.step_number}-adapter.tar.gz"
    elif job.status != JobStatus.SUCCEEDED or not job.adapter_key:
        raise InvalidRequest(
            f"Job {job.id} has no final adapter yet (status '{job.status}'); "
            "download a checkpoint with ?checkpoint=<id>",
            param="fine_tuning_job_id",
            code="adapter_not_ready",
        )
    else:
        key, filename = job.adapter_key, f"{job.id}-adapter.tar.gz"
    return stored_object(key, filename, "application/gzip")
