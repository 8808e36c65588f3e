"""Garbage collection of the object store: delete what no database row points to.

Only the platform's own namespaces are examined (``files/``, ``jobs/``, ``models/``,
``model-sources/``); anything else in the bucket is never touched. An object is garbage when:

* ``files/<id>``: no File row has it as ``storage_key`` (a deleted file whose object stayed, an
  upload whose row was never committed);
* ``jobs/<id>/...``: the job row is gone; or the job is finished and the object is a checkpoint
  no Checkpoint row names (dropped beyond ``keep_checkpoints``, or written by an attempt that
  lost the job), or an adapter/merged model of a job that did not succeed;
* ``models/<name>/...``, ``model-sources/<name>/...``: no base model row of that name.

Retention (on top): a job finished more than ``checkpoint_age`` ago keeps only its latest
``keep_checkpoints`` checkpoints (rows and objects). Final adapters of succeeded jobs, files,
and everything of unfinished jobs (queued, running, paused, validating) are always kept, and so
are the newest checkpoints of failed jobs (a retry resumes from them).

Nothing younger than ``grace`` is deleted: an upload in flight, or a checkpoint written just
before its row commits, looks unreferenced for a moment. A run deletes checkpoint rows first
(committed), then lists the store again and deletes objects that are still unreferenced, so an
object that gained a row between the two steps is kept. Last, every job that lost objects and
still has its row gets its ``stored_bytes`` counted again, so the storage quota frees up.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from core.catalog.lookup import MODEL_STORE_PREFIX
from core.catalog.registry import MODEL_SOURCES_PREFIX
from core.db.engine import session_scope
from core.db.models import Checkpoint, File, Job, Model
from core.jobs.status import FINAL_STATUSES, JobStatus
from core.storage import quota
from core.storage.objects import ObjectStore
from core.timeutil import utcnow

log = logging.getLogger(__name__)

NAMESPACES = ("files", "jobs", MODEL_STORE_PREFIX, MODEL_SOURCES_PREFIX)
JOB_OUTPUTS = ("adapter.tar.gz", "adapter", "merged.tar.gz")
NO_JOB_ROW = "no job row"


@dataclass(frozen=True)
class GcPolicy:
    """What gc may delete (documented in docs/operations.md)."""

    grace: timedelta = timedelta(hours=24)
    keep_checkpoints: int = 1
    checkpoint_age: timedelta = timedelta(days=7)


@dataclass(frozen=True)
class Garbage:
    key: str
    bytes: int
    reason: str


@dataclass(frozen=True)
class PrunedCheckpoint:
    id: str
    job_id: str
    step: int
    storage_prefix: str


@dataclass
class GcReport:
    """What a gc run deleted (or, dry, would delete)."""

    dry_run: bool
    objects: list[Garbage] = field(default_factory=list)
    checkpoints: list[PrunedCheckpoint] = field(default_factory=list)
    scanned_objects: int = 0
    scanned_bytes: int = 0
    young_objects: int = 0
    young_bytes: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def bytes(self) -> int:
        return sum(g.bytes for g in self.objects)

    def as_dict(self) -> dict[str, Any]:
        return {
            "object": "gc.report",
            "dry_run": self.dry_run,
            "deleted_objects": len(self.objects),
            "deleted_bytes": self.bytes,
            "pruned_checkpoints": len(self.checkpoints),
            "scanned_objects": self.scanned_objects,
            "scanned_bytes": self.scanned_bytes,
            "kept_young_objects": self.young_objects,
            "kept_young_bytes": self.young_bytes,
            "objects": [{"key": g.key, "bytes": g.bytes, "reason": g.reason} for g in self.objects],
            "checkpoints": [
                {"id": c.id, "job_id": c.job_id, "step": c.step} for c in self.checkpoints
            ],
            "errors": self.errors,
        }


@dataclass
class _References:
    file_keys: set[str]
    jobs: dict[str, str]  # id -> status
    adapter_jobs: set[str]  # jobs whose adapter a row points to
    checkpoint_prefixes: set[str]
    pruned: list[PrunedCheckpoint]
    base_models: set[str]

    @property
    def pruned_prefixes(self) -> set[str]:
        return {p.storage_prefix for p in self.pruned}


def _references(session: Session, policy: GcPolicy, now: datetime) -> _References:
    """Everything the database points to (in memory: fine for millions of rows)."""
    jobs = {jid: status for jid, status in session.execute(select(Job.id, Job.status))}
    adapter_jobs = {
        jid
        for (jid,) in session.execute(
            select(Job.id).where(Job.status == JobStatus.SUCCEEDED, Job.adapter_key.is_not(None))
        )
    }
    adapter_jobs |= {
        jid
        for (jid,) in session.execute(
            select(Model.job_id).where(Model.kind != "base", Model.job_id.is_not(None))
        )
        if jid is not None
    }
    old_finished = {
        jid
        for (jid,) in session.execute(
            select(Job.id).where(
                Job.status.in_(FINAL_STATUSES), Job.finished_at < now - policy.checkpoint_age
            )
        )
    }
    by_job: dict[str, list[tuple[int, str, str]]] = defaultdict(list)
    for cid, jid, step, prefix in session.execute(
        select(Checkpoint.id, Checkpoint.job_id, Checkpoint.step_number, Checkpoint.storage_prefix)
    ):
        by_job[jid].append((step, cid, prefix))
    kept: set[str] = set()
    pruned: list[PrunedCheckpoint] = []
    for jid, rows in by_job.items():
        rows.sort(reverse=True)
        keep = max(policy.keep_checkpoints, 0) if jid in old_finished else len(rows)
        kept.update(prefix for _, _, prefix in rows[:keep])
        pruned.extend(PrunedCheckpoint(cid, jid, step, prefix) for step, cid, prefix in rows[keep:])
    return _References(
        file_keys=set(session.scalars(select(File.storage_key))),
        jobs=jobs,
        adapter_jobs=adapter_jobs,
        checkpoint_prefixes=kept,
        pruned=pruned,
        base_models=set(session.scalars(select(Model.id).where(Model.kind == "base"))),
    )


def why_garbage(
    key: str, refs: _References, pruned_prefixes: frozenset[str] = frozenset()
) -> str | None:
    """Why ``key`` is unreferenced, or None when something still needs it."""
    parts = key.split("/")
    if parts[0] == "files":
        return None if key in refs.file_keys else "no file row"
    if parts[0] in (MODEL_STORE_PREFIX, MODEL_SOURCES_PREFIX) and len(parts) >= 3:
        return None if parts[1] in refs.base_models else "no base model of that name"
    if parts[0] != "jobs" or len(parts) < 3:
        return None
    status = refs.jobs.get(parts[1])
    if status is None:
        return NO_JOB_ROW
    if status not in FINAL_STATUSES:
        return None  # a running job writes checkpoints before their rows: never touch it
    if parts[2] == "checkpoints" and len(parts) >= 5:
        prefix = "/".join(parts[:4])
        if prefix in refs.checkpoint_prefixes:
            return None
        if prefix in pruned_prefixes:
            return "checkpoint beyond retention"
        return "no checkpoint row"
    if parts[2] in JOB_OUTPUTS:
        return None if parts[1] in refs.adapter_jobs else f"output of a {status} job"
    return None  # an artifact kind gc does not know: keep it


def plan(
    session: Session, store: ObjectStore, policy: GcPolicy, now: datetime | None = None
) -> GcReport:
    """What gc would delete now (reads only)."""
    now = now or utcnow()
    refs = _references(session, policy, now)
    report = GcReport(dry_run=True, checkpoints=list(refs.pruned))
    cutoff = now - policy.grace
    pruned_prefixes = frozenset(refs.pruned_prefixes)
    for namespace in NAMESPACES:
        for obj in store.list_objects(namespace):
            report.scanned_objects += 1
            report.scanned_bytes += obj.size
            reason = why_garbage(obj.key, refs, pruned_prefixes)
            if reason is None:
                continue
            if obj.modified > cutoff:
                report.young_objects += 1
                report.young_bytes += obj.size
                continue
            report.objects.append(Garbage(obj.key, obj.size, reason))
    return report


def prune_checkpoints(session: Session, pruned: list[PrunedCheckpoint]) -> int:
    """Delete the checkpoint rows retention gave up (the caller commits first, then gc deletes
    their objects)."""
    if not pruned:
        return 0
    ids = [p.id for p in pruned]
    for start in range(0, len(ids), 500):
        session.execute(delete(Checkpoint).where(Checkpoint.id.in_(ids[start : start + 500])))
    return len(ids)


def run(database_url: str, store: ObjectStore, policy: GcPolicy, *, dry_run: bool) -> GcReport:
    """Plan (dry run), or prune checkpoint rows (committed), re-plan and delete.

    Its own units of work: rows must be gone before their objects are. The caller records the
    audit entry (``audit_details``)."""
    now = utcnow()
    with session_scope(database_url) as session:
        first = plan(session, store, policy, now)
        if dry_run:
            return first
        prune_checkpoints(session, first.checkpoints)
    # Listed again after the commit: only what is still unreferenced now goes.
    with session_scope(database_url) as session:
        final = plan(session, store, policy, now)
    final.dry_run = False
    final.checkpoints = first.checkpoints
    deleted: list[Garbage] = []
    for garbage in final.objects:
        try:
            store.delete(garbage.key)
            deleted.append(garbage)
        except Exception as exc:  # keep going: one stuck object must not stop the sweep
            log.warning("gc: could not delete %s: %s", garbage.key, exc)
            final.errors.append(f"{garbage.key}: {exc}")
    final.objects = deleted
    _refresh_stored_bytes(database_url, store, deleted)
    log.info(
        "gc: deleted %d objects (%d bytes), pruned %d checkpoints",
        len(deleted),
        final.bytes,
        len(final.checkpoints),
    )
    return final


def _refresh_stored_bytes(database_url: str, store: ObjectStore, deleted: list[Garbage]) -> None:
    """Count again what the jobs that lost objects store (their ``stored_bytes`` is in the
    organization's storage quota). Jobs without a row have nothing to update."""
    job_ids = sorted(
        {
            g.key.split("/")[1]
            for g in deleted
            if g.key.startswith("jobs/") and g.reason != NO_JOB_ROW
        }
    )
    if not job_ids:
        return
    with session_scope(database_url) as session:
        for job_id in job_ids:
            quota.refresh_job_bytes(session, store, job_id)


def audit_details(report: GcReport) -> dict[str, Any]:
    """The audit entry of a gc run: counts, not the whole list."""
    return {
        "dry_run": report.dry_run,
        "deleted_objects": len(report.objects),
        "deleted_bytes": report.bytes,
        "pruned_checkpoints": len(report.checkpoints),
        "errors": len(report.errors),
    }
