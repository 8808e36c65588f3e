"""Conditional UPDATE/DELETE statements and the number of rows they matched.

Every status change is a guarded update (``... WHERE status = :expected``) whose row count
says whether this caller won. ``Session.execute`` is typed to return a plain ``Result``, which
has no ``rowcount``; a DML statement without RETURNING always gets a ``CursorResult``, so this
one place says so instead of every caller.
"""

from __future__ import annotations

from typing import Any, cast

from sqlalchemy import CursorResult
from sqlalchemy.orm import Session
from sqlalchemy.sql.dml import UpdateBase


def rows_matched(session: Session, statement: UpdateBase) -> int:
    """Execute an UPDATE or DELETE (no RETURNING) and return how many rows it matched."""
    result = cast(CursorResult[Any], session.execute(statement))
    return result.rowcount


def execute_dml(session: Session, statement: UpdateBase) -> CursorResult[Any]:
    """Execute an UPDATE or DELETE (no RETURNING); its result carries ``rowcount``."""
    return cast(CursorResult[Any], session.execute(statement))
