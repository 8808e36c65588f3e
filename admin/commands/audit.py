"""``dorado-admin audit``: read the audit log, newest first."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import click

from admin.context import AdminContext, pass_admin
from admin.output import emit_rows, handle_errors, json_option
from core.tenancy import audit as audit_log

COLUMNS = [
    ("time", "TIME"),
    ("actor", "ACTOR"),
    ("action", "ACTION"),
    ("object_type", "TYPE"),
    ("object_id", "OBJECT"),
    ("organization_id", "ORG"),
    ("ip", "IP"),
]
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _since(value: str | None) -> datetime | None:
    """``30m``, ``2h``, ``7d`` ago, or an ISO date/time (UTC when no zone is given)."""
    if not value:
        return None
    if value[-1:] in UNITS and value[:-1].isdigit():
        return datetime.now(timezone.utc) - timedelta(seconds=int(value[:-1]) * UNITS[value[-1]])
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(
            "use e.g. 30m, 2h, 7d or 2026-11-29T12:00", param_hint="--since"
        ) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


@click.command("audit")
@click.option("--org", "org_id", default=None, help="Only this organization's events.")
@click.option("--action", default=None, help="Only this action (e.g. api_key.revoke).")
@click.option("--object", "object_id", default=None, help="Only events about this object id.")
@click.option("--since", default=None, help="Only events since: 30m, 2h, 7d or an ISO time.")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 10000))
@click.option("--after", default=None, help="Continue after this event id (older events).")
@json_option
@pass_admin
@handle_errors
def audit(
    admin: AdminContext,
    org_id: str | None,
    action: str | None,
    object_id: str | None,
    since: str | None,
    limit: int,
    after: str | None,
    as_json: bool,
) -> None:
    """Who created, cancelled, downloaded or deleted what, when, with which key."""
    flt = audit_log.AuditFilter(
        organization_id=org_id, action=action, object_id=object_id, since=_since(since)
    )
    with admin.session() as session:
        rows, has_more = audit_log.list_events(session, flt, limit=limit, after=after)
        out = [audit_log.event_dict(e) for e in rows]
    for row in out:
        row["time"] = datetime.fromtimestamp(row["created_at"], tz=timezone.utc)
    if as_json:
        for row in out:
            row.pop("time")
    emit_rows(
        out,
        COLUMNS,
        as_json=as_json,
        title="Audit log" + (f" (more: --after {out[-1]['id']})" if has_more and out else ""),
        empty="No audit events.",
    )
