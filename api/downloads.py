"""Streaming a stored object to the client as a download (never held whole in memory)."""

from __future__ import annotations

from flask import Response, stream_with_context

from api.context import dorado


def stored_object(key: str, filename: str, mimetype: str, size: int | None = None) -> Response:
    """The object at ``key`` as an attachment; ``size`` saves a HEAD when already known."""
    store = dorado().store
    chunks = store.iter_chunks(key)  # opens eagerly: a missing object raises before headers
    length = size if size is not None else store.size(key)
    return Response(stream_with_context(chunks), mimetype=mimetype,
                    headers={"Content-Length": str(length),
                             "Content-Disposition": f'attachment; filename="{filename}"'})
