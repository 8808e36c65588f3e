"""Query parameters shared by list endpoints."""

from __future__ import annotations

from flask import request

from core.errors import InvalidRequest


def limit_arg(default: int, maximum: int = 100) -> int:
    raw = request.args.get("limit")
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise InvalidRequest("'limit' must be an integer", param="limit") from None
    if not 1 <= value <= maximum:
        raise InvalidRequest(f"'limit' must be between 1 and {maximum}", param="limit")
    return value


def after_arg() -> str | None:
    return request.args.get("after") or None
