"""``/v1/admin/models``, ``/v1/admin/gc`` and ``/v1/admin/stats``: the base model catalogue,
object-store garbage collection and usage statistics, for operators (an ``admin`` key of an
operator organization, enforced in ``api.auth``). The same core services as ``dorado-admin
models|gc|stats``."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, request

from api.audit import audit
from api.context import commit_early, db, dorado
from api.request_body import json_object
from api.serializers import page
from core.catalog import registry as model_registry
from core.errors import InvalidRequest
from core.observability import stats
from core.storage import gc
from core.storage.objects import delete_prefix
from core.tenancy.auth import get_organization

bp = Blueprint("admin_catalog", __name__, url_prefix="/v1/admin")

TRUE = ("1", "true", "yes")


def _flag(name: str) -> bool:
    return request.args.get(name, "").lower() in TRUE


def _optional_string(body: dict[str, Any], name: str) -> str | None:
    value = body.get(name)
    if value is not None and not isinstance(value, str):
        raise InvalidRequest(f"'{name}' must be a string", param=name, code="invalid_value")
    return value


def _string(body: dict[str, Any], name: str, default: str) -> str:
    value = _optional_string(body, name)
    return default if value is None else value


@bp.get("/models")
def list_models():
    """Base models with source, stored bytes and job counts (``?jobs=true``: which jobs)."""
    rows = model_registry.list_models(db(), dorado().store, with_jobs=_flag("jobs"))
    return page([m.as_dict() for m in rows], False)


@bp.post("/models")
def add_model():
    """Register ``source`` (a directory or .gguf file on the API's machine, or an S3 prefix)
    as the base model ``name``. Synchronous: the weights are copied before it answers."""
    body = json_object()
    unknown = sorted(set(body) - {"name", "source"})
    if unknown:
        raise InvalidRequest(
            f"Unknown field '{unknown[0]}'", param=unknown[0], code="invalid_value"
        )
    source = _optional_string(body, "source")
    if not source:
        raise InvalidRequest(
            "'source' is required: a server-side directory or .gguf path, or s3://bucket/prefix",
            param="source",
            code="invalid_value",
        )
    name = _optional_string(body, "name") or model_registry.default_name(source)
    settings = dorado().settings
    row = model_registry.add_model(db(), dorado().store, settings, name=name, source=source)
    audit("model.add", "model", row.id, details={"source": row.source})
    size, stored = model_registry.stored_bytes(dorado().store, row.id)
    return {
        "id": row.id,
        "object": "model",
        "source": row.source,
        "builtin": False,
        "created_at": int(row.created_at.timestamp()),
        "bytes": size,
        "stored": stored,
        "jobs": 0,
        "active_jobs": 0,
    }


@bp.delete("/models/<path:name>")
def remove_model(name: str):
    """Remove a registered base model (``?force=true`` cancels unfinished jobs using it)."""
    force = _flag("force")
    removed = model_registry.remove_model(db(), name, force=force)
    audit(
        "model.remove",
        "model",
        name,
        details={"force": force, "cancelled_jobs": list(removed.cancelled_jobs)},
    )
    commit_early()  # the rows are gone for good before their objects go
    deleted = sum(delete_prefix(dorado().store, prefix) for prefix in removed.prefixes)
    return {
        "id": name,
        "object": "model",
        "deleted": True,
        "deleted_objects": deleted,
        "cancelled_jobs": list(removed.cancelled_jobs),
    }


@bp.post("/gc")
def run_gc():
    """Delete unreferenced stored objects; ``{"dry_run": true}`` only reports them."""
    body = json_object() if request.get_data() else {}
    unknown = sorted(set(body) - {"dry_run", "grace", "keep_checkpoints", "checkpoint_age"})
    if unknown:
        raise InvalidRequest(
            f"Unknown field '{unknown[0]}'", param=unknown[0], code="invalid_value"
        )
    dry_run = body.get("dry_run", False)
    keep = body.get("keep_checkpoints", 1)
    if not isinstance(dry_run, bool):
        raise InvalidRequest("'dry_run' must be a boolean", param="dry_run", code="invalid_value")
    if not isinstance(keep, int) or isinstance(keep, bool) or keep < 0:
        raise InvalidRequest(
            "'keep_checkpoints' must be a non-negative integer",
            param="keep_checkpoints",
            code="invalid_value",
        )
    policy = gc.GcPolicy(
        grace=stats.parse_period(_string(body, "grace", "24h"), param="grace", allow_zero=True),
        keep_checkpoints=keep,
        checkpoint_age=stats.parse_period(
            _string(body, "checkpoint_age", "7d"), param="checkpoint_age", allow_zero=True
        ),
    )
    report = gc.run(dorado().settings.database_url, dorado().store, policy, dry_run=dry_run)
    audit("storage.gc", "object_store", "gc", details=gc.audit_details(report))
    return report.as_dict()


@bp.get("/stats")
def usage_stats():
    """Jobs by status, wait/run percentiles, GPU-hours and tokens (``?since=7d``,
    ``?organization_id=``)."""
    org_id = request.args.get("organization_id") or None
    period = stats.period_ending_now(request.args.get("since", "7d"))
    if org_id:
        get_organization(db(), org_id)
    return stats.usage(db(), period, org_id)
