"""``/v1/files``: upload (validated line by line), list, retrieve, content."""

from __future__ import annotations

import os
from typing import BinaryIO, cast

from flask import Blueprint, g, request

from api.context import commit_early, db, dorado
from api.downloads import stored_object
from api.pagination import after_arg, limit_arg
from api.serializers import file_object, page
from core.errors import InvalidRequest
from core.storage import files
from core.storage import quota as storage_quota

bp = Blueprint("files", __name__, url_prefix="/v1/files")


@bp.post("")
def create_file():
    upload = request.files.get("file")
    if upload is None:
        raise InvalidRequest(
            "Missing 'file': send the JSONL file as multipart form field 'file'", param="file"
        )
    purpose = request.form.get("purpose")
    if not purpose:
        raise InvalidRequest("Missing 'purpose' (use 'fine-tune')", param="purpose")
    stream = cast(BinaryIO, upload.stream)  # werkzeug types it as the wider IO[bytes]
    stream.seek(0, os.SEEK_END)
    size = stream.tell()
    stream.seek(0)
    storage_quota.check_upload(
        db(), g.org_id, size, max_upload_bytes=dorado().settings.max_upload_bytes
    )
    row = files.create_file(
        db(),
        dorado().store,
        g.org_id,
        filename=upload.filename or "",
        purpose=purpose,
        content=stream,
        size=size,
    )
    return file_object(row)


@bp.get("")
def list_files():
    order = request.args.get("order", "desc")
    if order not in ("asc", "desc"):
        raise InvalidRequest("'order' must be 'asc' or 'desc'", param="order")
    rows, has_more = files.list_files(
        db(),
        g.org_id,
        purpose=request.args.get("purpose"),
        limit=limit_arg(10000, maximum=10000),
        after=after_arg(),
        order=order,
    )
    return page([file_object(r) for r in rows], has_more, ids=True)


@bp.get("/<file_id>")
def retrieve_file(file_id: str):
    return file_object(files.get_file(db(), g.org_id, file_id))


@bp.get("/<file_id>/content")
def file_content(file_id: str):
    row = files.get_file(db(), g.org_id, file_id)
    return stored_object(row.storage_key, row.filename, "application/octet-stream", size=row.bytes)


@bp.delete("/<file_id>")
def delete_file(file_id: str):
    key = files.delete_file(db(), g.org_id, file_id)
    commit_early()  # the rows are gone for good before their objects go
    dorado().store.delete(key)
    return {"id": file_id, "object": "file", "deleted": True}
