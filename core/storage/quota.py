"""The per-organization storage quota: every byte an organization keeps in the object store.

Counted: its files (uploads and the result files jobs write) and, per job, everything under
``jobs/<job id>/`` (checkpoints, the final adapter, the merged export), which the job row
keeps as ``stored_bytes``, refreshed by whoever writes there (the worker after each
checkpoint and at the end, the API after a merge) or deletes there (``dorado-admin gc``). An
upload that would pass the quota is refused; an organization at or over its quota can neither
create nor resume jobs nor build merged exports (each would store more). A job already running
when the quota is reached finishes: the overshoot is bounded by that job's own outputs.
"""

from __future__ import annotations

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from core.db.models import File, Job, Organization
from core.errors import InvalidRequest, PayloadTooLarge
from core.storage.objects import ObjectStore


def job_prefix(job_id: str) -> str:
    """Where everything a job stores lives in the object store."""
    return f"jobs/{job_id}/"


def storage_used(session: Session, org_id: str) -> int:
    """Bytes the organization stores: its files plus its jobs' objects."""
    files = session.scalar(
        select(func.coalesce(func.sum(File.bytes), 0)).where(File.organization_id == org_id)
    )
    jobs = session.scalar(
        select(func.coalesce(func.sum(Job.stored_bytes), 0)).where(Job.organization_id == org_id)
    )
    return int(files or 0) + int(jobs or 0)


def refresh_job_bytes(session: Session, store: ObjectStore, job_id: str) -> int:
    """Count the bytes under the job's prefix (one listing) and record them on the job."""
    total = sum(obj.size for obj in store.list_objects(job_prefix(job_id)))
    session.execute(update(Job).where(Job.id == job_id).values(stored_bytes=total))
    return total


def _quota(session: Session, org_id: str) -> int | None:
    # A whole-row get: the job quota check that follows finds the row in the session.
    org = session.get(Organization, org_id)
    return org.storage_quota_bytes if org is not None else None


def over_quota(session: Session, org_id: str) -> bool:
    """Whether the organization stores at least its quota (nothing more fits)."""
    quota = _quota(session, org_id)
    return quota is not None and storage_used(session, org_id) >= quota


def check_storage_quota(session: Session, org_id: str, incoming_bytes: int) -> None:
    """Raise InvalidRequest (``storage_quota_exceeded``) if storing ``incoming_bytes`` more
    would exceed the organization's quota. Concurrent uploads may each pass the check: the
    quota can be overshot by the uploads in flight at one moment, never more."""
    quota = _quota(session, org_id)
    if quota is None:
        return
    used = storage_used(session, org_id)
    if used + incoming_bytes > quota:
        raise InvalidRequest(
            f"Storage quota exceeded: this organization stores {used} of its {quota} bytes "
            f"and the upload is {incoming_bytes} bytes. Delete files or ask an operator to "
            "raise the quota.",
            param="file",
            code="storage_quota_exceeded",
        )


def check_room_for_outputs(session: Session, org_id: str, what: str) -> None:
    """Raise InvalidRequest (``storage_quota_exceeded``) when the organization is at or over
    its quota: ``what`` (a job, a merged export) would store more."""
    quota = _quota(session, org_id)
    if quota is None:
        return
    used = storage_used(session, org_id)
    if used >= quota:
        raise InvalidRequest(
            f"Storage quota exceeded: this organization stores {used} of its {quota} bytes "
            f"(files, checkpoints, adapters and merged exports), so {what} cannot store "
            "anything more. Delete files or ask an operator to raise the quota.",
            param=None,
            code="storage_quota_exceeded",
        )


def check_upload(session: Session, org_id: str, size: int, *, max_upload_bytes: int) -> None:
    """An upload of ``size`` bytes must fit the per-file limit (413) and the quota (400)."""
    if size > max_upload_bytes:
        raise PayloadTooLarge(
            f"The file is {size} bytes; the largest accepted upload is {max_upload_bytes} bytes",
            param="file",
        )
    check_storage_quota(session, org_id, size)
