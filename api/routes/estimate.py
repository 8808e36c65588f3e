"""``POST /v1/fine_tuning/jobs/estimate``: what a job would cost, before creating it."""

from __future__ import annotations

from flask import Blueprint, g, request
from pydantic import ValidationError

from api.context import db
from api.errors import pydantic_error
from api.schemas import JobCreateRequest
from core.errors import InvalidRequest
from core.estimate import estimate_job

bp = Blueprint("estimate", __name__, url_prefix="/v1/fine_tuning/jobs")


@bp.post("/estimate")
def estimate():
    """Same body as ``POST /v1/fine_tuning/jobs``; answers steps, approximate tokens and time."""
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object "
                             "(Content-Type: application/json)")
    try:
        req = JobCreateRequest.model_validate(body)
    except ValidationError as exc:
        return pydantic_error(exc)
    result = estimate_job(db(), g.org_id, model=req.model, training_file=req.training_file,
                          validation_file=req.validation_file,
                          hyperparameters=req.resolved_hyperparameters(), adapter=req.adapter)
    return result.as_dict()
