"""``GET /v1/admin/audit``: the audit log for operators, newest first, keyset-paginated.

Filters: ``organization_id``, ``action``, ``object_id``, ``since`` (unix seconds)."""

from __future__ import annotations

from datetime import datetime, timezone

from flask import Blueprint, request

from api.context import db
from api.pagination import after_arg, limit_arg
from core.errors import InvalidRequest
from core.tenancy import audit

bp = Blueprint("admin_audit", __name__, url_prefix="/v1/admin")


def _since() -> datetime | None:
    raw = request.args.get("since")
    if not raw:
        return None
    try:
        return datetime.fromtimestamp(int(raw), tz=timezone.utc)
    except (ValueError, OverflowError, OSError):
        raise InvalidRequest(
            "'since' must be a unix timestamp in seconds", param="since", code="invalid_value"
        ) from None


@bp.get("/audit")
def list_audit_events():
    flt = audit.AuditFilter(
        organization_id=request.args.get("organization_id") or None,
        action=request.args.get("action") or None,
        object_id=request.args.get("object_id") or None,
        since=_since(),
    )
    rows, has_more = audit.list_events(
        db(), flt, limit=limit_arg(50, maximum=1000), after=after_arg()
    )
    data = [audit.event_dict(e) for e in rows]
    return {
        "object": "list",
        "data": data,
        "has_more": has_more,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
    }
