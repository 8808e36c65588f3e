"""Keyset pagination on ``(created_at, id)``.

The cursor condition is a row-value comparison, ``(created_at, id) < (:t, :id)``: PostgreSQL
uses it as an index condition and starts the scan at the cursor. The equivalent
``created_at < :t OR (created_at = :t AND id < :id)`` is only a filter, so a page deep in a
100,000-job listing read every newer row first (~60 ms instead of ~0.1 ms). SQLite has
understood row values since 3.15.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ColumnElement, tuple_
from sqlalchemy.orm import InstrumentedAttribute


def after_cursor(
    created_at: InstrumentedAttribute[datetime],
    id_: InstrumentedAttribute[str],
    cursor_created_at: datetime | ColumnElement[datetime],
    cursor_id: str | ColumnElement[str],
    *,
    descending: bool = True,
) -> ColumnElement[bool]:
    """Rows strictly after the cursor row in ``(created_at, id)`` order (newest first by
    default). The cursor may be values or SQL expressions (a subquery, a bound parameter)."""
    row, cursor = tuple_(created_at, id_), tuple_(cursor_created_at, cursor_id)
    return row < cursor if descending else row > cursor
