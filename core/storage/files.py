"""Uploaded files: validated line by line, then stored under a key built from their id."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import BinaryIO

from sqlalchemy import select
from sqlalchemy.orm import Session

from core import ids
from core.db.keyset import after_cursor
from core.db.models import File
from core.errors import InvalidFile, InvalidRequest, NotFound
from core.storage.datasets import DatasetLimits, ValidationReport, validate_stream
from core.storage.objects import ObjectStore
from core.timeutil import utcnow

log = logging.getLogger(__name__)

UPLOAD_PURPOSES = {"fine-tune"}
SYSTEM_PURPOSES = {"fine-tune-results"}


def file_key(file_id: str) -> str:
    return f"files/{file_id}"


def validate_upload(spooled: BinaryIO, limits: DatasetLimits = DatasetLimits()) -> ValidationReport:
    """Validate a whole seekable upload in bounded memory; leaves it rewound."""
    spooled.seek(0)
    report = validate_stream(spooled, limits)
    spooled.seek(0)
    return report


def create_file(
    session: Session,
    store: ObjectStore,
    org_id: str,
    *,
    filename: str,
    purpose: str,
    content: BinaryIO,
    size: int,
    limits: DatasetLimits = DatasetLimits(),
) -> File:
    """Validate an upload and store it. Raises InvalidFile (nothing stored) when it is bad.

    ``content`` must be seekable (the API spools uploads to a temporary file); ``limits`` are
    the operator's caps on one line (``DatasetLimits.from_settings``).
    """
    if purpose not in UPLOAD_PURPOSES:
        raise InvalidRequest(
            f"Invalid purpose '{purpose}'. Supported: {', '.join(sorted(UPLOAD_PURPOSES))}",
            param="purpose",
        )
    if not filename.lower().endswith(".jsonl"):
        raise InvalidFile(
            f"Invalid file format for fine-tuning: '{filename}' is not a .jsonl file", param="file"
        )
    report = validate_upload(content, limits)
    if not report.ok:
        raise InvalidFile(
            report.summary(), param="file", problems=[p.as_dict() for p in report.problems]
        )
    row = File(
        id=ids.file_id(),
        organization_id=org_id,
        filename=Path(filename).name[:512],
        purpose=purpose,
        bytes=size,
        status="processed",
        created_at=utcnow(),
        example_count=report.example_count,
        stats=report.stats(),
        storage_key="",
    )
    row.storage_key = file_key(row.id)
    store.put_fileobj(row.storage_key, content)
    session.add(row)
    session.flush()
    log.info("stored file %s (%s bytes, %s examples)", row.id, size, report.example_count)
    return row


def create_system_file(
    session: Session, store: ObjectStore, org_id: str, *, filename: str, purpose: str, path: Path
) -> File:
    """A file the platform writes for a user (e.g. a job's metrics CSV)."""
    row = File(
        id=ids.file_id(),
        organization_id=org_id,
        filename=filename,
        purpose=purpose,
        bytes=path.stat().st_size,
        status="processed",
        created_at=utcnow(),
        storage_key="",
    )
    row.storage_key = file_key(row.id)
    store.put_file(row.storage_key, path)
    session.add(row)
    session.flush()
    return row


def get_file(session: Session, org_id: str, file_id: str, *, param: str = "file_id") -> File:
    row = session.get(File, file_id)
    if row is None or row.organization_id != org_id:
        raise NotFound(f"No such File object: {file_id}", param=param)
    return row


def list_files(
    session: Session, org_id: str, *, purpose: str | None, limit: int, after: str | None, order: str
) -> tuple[list[File], bool]:
    """A page of files, newest first by default; keyset pagination on (created_at, id)."""
    stmt = select(File).where(File.organization_id == org_id)
    if purpose:
        stmt = stmt.where(File.purpose == purpose)
    desc = order != "asc"
    if after:
        cursor = session.get(File, after)
        if cursor is None or cursor.organization_id != org_id:
            raise InvalidRequest(f"No such File object: {after}", param="after")
        stmt = stmt.where(
            after_cursor(File.created_at, File.id, cursor.created_at, cursor.id, descending=desc)
        )
    if desc:
        stmt = stmt.order_by(File.created_at.desc(), File.id.desc())
    else:
        stmt = stmt.order_by(File.created_at.asc(), File.id.asc())
    rows = list(session.scalars(stmt.limit(limit + 1)))
    return rows[:limit], len(rows) > limit


def delete_file(session: Session, org_id: str, file_id: str) -> str:
    """Delete the row; returns the storage key, to delete once the deletion is committed.
    Jobs keep the id; one that still needs the data fails with a clear "file missing" error."""
    row = get_file(session, org_id, file_id)
    session.delete(row)
    session.flush()
    return row.storage_key
