"""The per-organization storage quota: bytes of files (uploads and the result files jobs
write) an organization keeps. Adapters and checkpoints are not counted: their number is
bounded by the job quotas and ``keep_checkpoints``, and their size by the base model."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from core.db.models import File, Organization
from core.errors import InvalidRequest, PayloadTooLarge


def storage_used(session: Session, org_id: str) -> int:
    """Bytes of the organization's stored files."""
    return int(
        session.scalar(
            select(func.coalesce(func.sum(File.bytes), 0)).where(File.organization_id == org_id)
        )
        or 0
    )


def check_storage_quota(session: Session, org_id: str, incoming_bytes: int) -> None:
    """Raise InvalidRequest (``storage_quota_exceeded``) if storing ``incoming_bytes`` more
    would exceed the organization's quota. Concurrent uploads may each pass the check: the
    quota can be overshot by the uploads in flight at one moment, never more."""
    quota = session.scalar(
        select(Organization.storage_quota_bytes).where(Organization.id == org_id)
    )
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


def check_upload(session: Session, org_id: str, size: int, *, max_upload_bytes: int) -> None:
    """An upload of ``size`` bytes must fit the per-file limit (413) and the quota (400)."""
    if size > max_upload_bytes:
        raise PayloadTooLarge(
            f"The file is {size} bytes; the largest accepted upload is {max_upload_bytes} bytes",
            param="file",
        )
    check_storage_quota(session, org_id, size)
