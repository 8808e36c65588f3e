"""``POST /v1/fine_tuning/jobs/estimate``: what a job would cost, before creating it."""

from __future__ import annotations

from flask import Blueprint, g

from api.context import db, dorado
from api.request_body import json_object
from api.schemas import JobCreateRequest
from core.jobs.estimate import estimate_job

bp = Blueprint("estimate", __name__, url_prefix="/v1/fine_tuning/jobs")


@bp.post("/estimate")
def estimate():
    """Same body as ``POST /v1/fine_tuning/jobs`` (``ft:`` models and DPO ``method`` too);
    answers steps, approximate tokens and time, and the memory plan (``resources``)."""
    # A ValidationError becomes the 400 envelope in api.errors.
    req = JobCreateRequest.model_validate(json_object())
    result = estimate_job(
        db(),
        g.org_id,
        model=req.model,
        training_file=req.training_file,
        validation_file=req.validation_file,
        hyperparameters=req.resolved_hyperparameters(),
        # As creation: None when not given (a continued job trains its parent's adapter).
        adapter=req.adapter if "adapter" in req.model_fields_set else None,
        method=req.method_type,
        training=req.training,
        max_seq_length=req.max_seq_length,
        pool=req.pool,
        precision=req.precision,
        nodes=req.nodes or 1,
        declared_pools=dorado().settings.declared_pools,
    )
    return result.as_dict()
