"""``dorado-admin webhooks list|create|update|delete|deliveries|resend``: organizations'
webhook endpoints and their delivery log (the signing secret is printed once)."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import click
from rich.console import Console

from admin.context import AdminContext, pass_admin
from admin.output import emit_object, emit_rows, handle_errors, json_option, to_json
from core.tenancy import audit, auth
from core.webhooks import endpoints as service
from core.webhooks.config import webhook_config
from core.webhooks.events import EVENT_TYPES

ENDPOINT_COLUMNS = [
    ("id", "ID"),
    ("organization_id", "ORG"),
    ("name", "NAME"),
    ("url", "URL"),
    ("event_types_text", "EVENTS"),
    ("enabled", "ENABLED"),
]
DELIVERY_COLUMNS = [
    ("id", "ID (webhook-id)"),
    ("event_type", "EVENT"),
    ("job_id", "JOB"),
    ("status", "STATUS"),
    ("attempts", "ATTEMPTS"),
    ("last_status_code", "HTTP"),
    ("last_latency_ms", "MS"),
    ("next_attempt_at_text", "NEXT RETRY"),
    ("last_error", "ERROR"),
]
event_option = click.option(
    "--event",
    "event_types",
    multiple=True,
    type=click.Choice(EVENT_TYPES),
    help="An event type to send (repeat the option for several).",
)


def _when(value: int | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, tz=timezone.utc)


def _record(admin: AdminContext, session: Any, action: str, row: Any, **details: Any) -> None:
    audit.record(
        session,
        action=action,
        object_type="webhook_endpoint",
        object_id=row.id,
        organization_id=row.organization_id,
        actor=admin.actor,
        details=details or None,
    )


def _endpoint_out(row: Any, secret: str | None = None) -> dict[str, Any]:
    return {**service.endpoint_dict(row, secret), "organization_id": row.organization_id}


@click.group("webhooks")
def webhooks() -> None:
    """Webhook endpoints of organizations and their deliveries."""


@webhooks.command("list")
@click.argument("org_id", required=False)
@json_option
@pass_admin
@handle_errors
def list_endpoints(admin: AdminContext, org_id: str | None, as_json: bool) -> None:
    """Endpoints of ORG_ID (of every organization without it), newest first."""
    with admin.session() as session:
        if org_id:
            auth.get_organization(session, org_id)
        rows, _ = service.list_endpoints(session, org_id, limit=1000)
        out = [_endpoint_out(r) for r in rows]
    if as_json:
        click.echo(to_json(out))
        return
    for row in out:
        row["event_types_text"] = ", ".join(
            t.removeprefix("fine_tuning.job.") for t in row["event_types"]
        )
    emit_rows(out, ENDPOINT_COLUMNS, as_json=False, title="Webhook endpoints", empty="None.")


@webhooks.command("create")
@click.argument("org_id")
@click.option("--url", required=True, help="Where to POST events (http or https).")
@event_option
@click.option("--name", default="", help="A label to recognise the endpoint by.")
@json_option
@pass_admin
@handle_errors
def create_endpoint(
    admin: AdminContext,
    org_id: str,
    url: str,
    event_types: tuple[str, ...],
    name: str,
    as_json: bool,
) -> None:
    """Add an endpoint to ORG_ID and print its signing secret: the only time it is shown."""
    with admin.session() as session:
        auth.get_organization(session, org_id)
        new = service.create_endpoint(
            session,
            service.secret_box(admin.settings),
            org_id,
            url=url,
            event_types=list(event_types),
            name=name,
            allow_private=webhook_config(admin.settings).allow_private,
        )
        _record(admin, session, "webhook_endpoint.create", new.row, url=url)
        out = _endpoint_out(new.row, new.secret)
    if as_json:
        click.echo(to_json(out))
        return
    emit_object(
        {k: v for k, v in out.items() if k != "signing_secret"},
        as_json=False,
        title="Webhook endpoint created",
    )
    Console().print("Signing secret (shown only now, store it safely):", style="bold yellow")
    click.echo(new.secret)


@webhooks.command("update")
@click.argument("endpoint_id")
@click.option("--url", default=None, help="A new URL.")
@event_option
@click.option("--name", default=None, help="A new name.")
@click.option("--enable/--disable", "enabled", default=None, help="Resume or stop deliveries.")
@json_option
@pass_admin
@handle_errors
def update_endpoint(
    admin: AdminContext,
    endpoint_id: str,
    url: str | None,
    event_types: tuple[str, ...],
    name: str | None,
    enabled: bool | None,
    as_json: bool,
) -> None:
    """Change ENDPOINT_ID; --disable stops its deliveries until --enable."""
    changes: dict[str, Any] = {
        key: value
        for key, value in (("url", url), ("name", name), ("enabled", enabled))
        if value is not None
    }
    if event_types:
        changes["event_types"] = list(event_types)
    if not changes:
        raise click.UsageError(
            "nothing to change: give --url, --event, --name or --enable/--disable"
        )
    with admin.session() as session:
        row = service.update_endpoint(
            session,
            None,
            endpoint_id,
            changes,
            allow_private=webhook_config(admin.settings).allow_private,
        )
        _record(admin, session, "webhook_endpoint.update", row, **changes)
        out = _endpoint_out(row)
    emit_object(out, as_json=as_json, title="Webhook endpoint updated")


@webhooks.command("delete")
@click.argument("endpoint_id")
@json_option
@pass_admin
@handle_errors
def delete_endpoint(admin: AdminContext, endpoint_id: str, as_json: bool) -> None:
    """Delete ENDPOINT_ID and its delivery log."""
    with admin.session() as session:
        row = service.delete_endpoint(session, None, endpoint_id)
        _record(admin, session, "webhook_endpoint.delete", row, url=row.url)
    emit_object(
        {"id": endpoint_id, "object": "webhook_endpoint.deleted", "deleted": True},
        as_json=as_json,
        title="Webhook endpoint deleted",
    )


@webhooks.command("deliveries")
@click.argument("endpoint_id")
@click.option("--status", type=click.Choice(service.DELIVERY_STATUSES), default=None)
@click.option("--limit", type=click.IntRange(1, 1000), default=20, show_default=True)
@json_option
@pass_admin
@handle_errors
def list_deliveries(
    admin: AdminContext, endpoint_id: str, status: str | None, limit: int, as_json: bool
) -> None:
    """ENDPOINT_ID's delivery log, newest first: attempts, HTTP status, latency, next retry."""
    with admin.session() as session:
        endpoint = service.get_endpoint(session, None, endpoint_id)
        rows, _ = service.list_deliveries(session, endpoint, limit=limit, status=status)
        out = [service.delivery_dict(d, e) for d, e in rows]
    if as_json:
        click.echo(to_json(out))
        return
    for row in out:
        row["next_attempt_at_text"] = _when(row["next_attempt_at"])
    emit_rows(
        out, DELIVERY_COLUMNS, as_json=False, title=f"Deliveries to {endpoint_id}", empty="None."
    )


@webhooks.command("resend")
@click.argument("delivery_id")
@json_option
@pass_admin
@handle_errors
def resend_delivery(admin: AdminContext, delivery_id: str, as_json: bool) -> None:
    """Send DELIVERY_ID again now (same webhook-id, a fresh retry budget)."""
    with admin.session() as session:
        delivery, event = service.resend_delivery(session, None, delivery_id)
        audit.record(
            session,
            action="webhook_delivery.resend",
            object_type="webhook_delivery",
            object_id=delivery.id,
            organization_id=event.organization_id,
            actor=admin.actor,
        )
        out = service.delivery_dict(delivery, event)
    emit_object(out, as_json=as_json, title="Delivery queued again")
