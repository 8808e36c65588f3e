"""Streaming a stored object to the client as a download (never held whole in memory)."""

from __future__ import annotations

from urllib.parse import quote

from flask import Response, stream_with_context
from werkzeug.http import dump_options_header

from api.context import dorado


def content_disposition(filename: str) -> str:
    """``attachment`` with ``filename`` encoded per RFC 6266/5987: an ASCII fallback in
    ``filename=`` (quotes and backslashes escaped, other characters replaced) and the exact
    name as UTF-8 in ``filename*=`` when it is not plain ASCII. A user's file name can thus
    neither end the header value nor inject another header (CR/LF are dropped)."""
    name = "".join(ch for ch in filename if ch >= " " and ch != "\x7f") or "download"
    ascii_name = name.encode("ascii", "replace").decode("ascii")
    value = dump_options_header("attachment", {"filename": ascii_name})
    if ascii_name != name:
        value += "; filename*=UTF-8''" + quote(name, safe="")
    return value


def stored_object(key: str, filename: str, mimetype: str, size: int | None = None) -> Response:
    """The object at ``key`` as an attachment; ``size`` saves a HEAD when already known."""
    store = dorado().store
    chunks = store.iter_chunks(key)  # opens eagerly: a missing object raises before headers
    length = size if size is not None else store.size(key)
    return Response(
        stream_with_context(chunks),
        mimetype=mimetype,
        headers={
            "Content-Length": str(length),
            "Content-Disposition": content_disposition(filename),
        },
    )
