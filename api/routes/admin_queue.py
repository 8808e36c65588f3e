"""``/v1/admin/queue``, ``/v1/admin/workers`` and ``/v1/admin/jobs``: operators see the
queue in dispatch order, drain workers and steer any organization's jobs. The same core
services as ``dorado-admin``; access is enforced centrally in ``api.auth``."""

from __future__ import annotations

from flask import Blueprint, g, request

from api.audit import actor, audit
from api.context import db, dorado
from api.request_body import json_object
from api.serializers import page
from core.db.models import Job
from core.errors import InvalidRequest
from core.jobs import admin as job_admin
from core.jobs.admin import Actor
from core.scheduling import order as queue_order
from core.scheduling import workers
from core.scheduling.wakeups import commit_and_publish
from core.timeutil import utcnow

bp = Blueprint("admin_queue", __name__, url_prefix="/v1/admin")


def _actor() -> Actor:
    key = g.get("api_key")
    # The service writes the audit entry; the catch-all audit hook must not add another.
    g.audited = True
    return Actor(actor(), api_key_id=key.id if key is not None else None, ip=request.remote_addr)


def _job_response(job: Job, *, requeued: bool = False):
    """Commit (waking a worker for a job back in the queue), then answer the job."""
    session = db()
    commit_and_publish(session, dorado().settings, [job] if requeued else [])
    return job_admin.job_dict(session, session.get_one(Job, job.id))


@bp.get("/queue")
def queue():
    now = utcnow()
    entries = queue_order.dispatch_order(
        db(),
        request.args.get("pool") or None,
        heartbeat_seconds=dorado().settings.worker_heartbeat_seconds,
    )
    return page([queue_order.queue_entry_dict(e, now) for e in entries], False)


@bp.get("/workers")
def list_workers():
    include_stopped = request.args.get("all", "").lower() in ("1", "true", "yes")
    beat = dorado().settings.worker_heartbeat_seconds
    rows = workers.list_workers(db(), include_stopped=include_stopped)
    return page([workers.worker_dict(w, beat) for w in rows], False)


def _drain(name: str, draining: bool):
    row = workers.set_draining(db(), name, draining)
    audit("worker.drain" if draining else "worker.undrain", "worker", name)
    return workers.worker_dict(row, dorado().settings.worker_heartbeat_seconds)


@bp.post("/workers/<name>/drain")
def drain_worker(name: str):
    return _drain(name, True)


@bp.post("/workers/<name>/undrain")
def undrain_worker(name: str):
    return _drain(name, False)


@bp.delete("/workers/<name>")
def forget_worker(name: str):
    workers.forget(db(), name, dorado().settings.worker_heartbeat_seconds)
    audit("worker.forget", "worker", name)
    return {"object": "worker.deleted", "name": name, "deleted": True}


@bp.get("/jobs/<job_id>")
def retrieve_job(job_id: str):
    return job_admin.job_dict(db(), job_admin.find_job(db(), job_id))


@bp.post("/jobs/<job_id>/cancel")
def cancel_job(job_id: str):
    return _job_response(job_admin.cancel(db(), job_id, _actor()))


@bp.post("/jobs/<job_id>/retry")
def retry_job(job_id: str):
    job, _ = job_admin.retry(db(), job_id, _actor())
    return _job_response(job, requeued=True)


@bp.post("/jobs/<job_id>/requeue")
def requeue_job(job_id: str):
    body = json_object() if request.get_data() else {}
    pool = body.get("pool")
    if pool is not None and not isinstance(pool, str):
        raise InvalidRequest("'pool' must be a string", param="pool", code="invalid_value")
    job = job_admin.requeue(
        db(), job_id, _actor(), pool=pool, declared_pools=dorado().settings.declared_pools
    )
    return _job_response(job, requeued=True)


@bp.post("/jobs/<job_id>/priority")
def set_priority(job_id: str):
    priority = json_object().get("priority")
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise InvalidRequest(
            "'priority' must be an integer", param="priority", code="invalid_value"
        )
    return _job_response(job_admin.set_priority(db(), job_id, priority, _actor()))


@bp.post("/jobs/<job_id>/bump")
def bump_job(job_id: str):
    return _job_response(job_admin.bump(db(), job_id, _actor()))
