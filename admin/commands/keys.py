"""``dorado-admin keys create|list|revoke``: API keys (the secret is printed once)."""

from __future__ import annotations

from datetime import datetime, timezone

import click
from rich.console import Console

from admin.context import AdminContext, pass_admin
from admin.output import emit_object, emit_rows, handle_errors, json_option, to_json
from core.tenancy import audit, auth

COLUMNS = [
    ("id", "ID"),
    ("prefix", "PREFIX"),
    ("name", "NAME"),
    ("scope", "SCOPE"),
    ("created_at_text", "CREATED"),
    ("last_used_at_text", "LAST USED"),
    ("revoked_at_text", "REVOKED"),
]


def _with_times(row: dict) -> dict:
    for field in ("created_at", "last_used_at", "revoked_at"):
        value = row.get(field)
        row[f"{field}_text"] = (
            None if value is None else datetime.fromtimestamp(value, tz=timezone.utc)
        )
    return row


@click.group("keys")
def keys() -> None:
    """API keys: create (secret shown once), list, revoke."""


@keys.command("list")
@click.argument("org_id")
@click.option("--active", is_flag=True, help="Hide revoked keys.")
@json_option
@pass_admin
@handle_errors
def list_keys(admin: AdminContext, org_id: str, active: bool, as_json: bool) -> None:
    """ORG_ID's keys: prefix, name, scope, created, last used, revoked (never secrets)."""
    with admin.session() as session:
        auth.get_organization(session, org_id)
        rows = [
            auth.key_dict(k) for k in auth.list_keys(session, org_id, include_revoked=not active)
        ]
    if as_json:
        click.echo(to_json(rows))
        return
    emit_rows(
        [_with_times(r) for r in rows],
        COLUMNS,
        as_json=False,
        title=f"Keys of {org_id}",
        empty="No keys.",
    )


@keys.command("create")
@click.argument("org_id")
@click.option("--name", default="", help="A label to recognise the key by.")
@click.option("--scope", type=click.Choice(auth.SCOPES), default="member", show_default=True)
@json_option
@pass_admin
@handle_errors
def create_key(admin: AdminContext, org_id: str, name: str, scope: str, as_json: bool) -> None:
    """Create a key for ORG_ID and print its secret: this is the only time it is shown."""
    with admin.session() as session:
        new = auth.create_key(session, org_id, name=name, scope=scope)
        audit.record(
            session,
            action="api_key.create",
            object_type="api_key",
            object_id=new.row.id,
            organization_id=org_id,
            actor=admin.actor,
            details={"name": name, "scope": scope, "prefix": new.row.prefix},
        )
        out = auth.key_dict(new.row, secret=new.secret)
    if as_json:
        click.echo(to_json(out))
        return
    emit_object(
        {k: v for k, v in out.items() if k != "key"}, as_json=False, title="API key created"
    )
    Console().print("Secret (shown only now, store it safely):", style="bold yellow")
    click.echo(new.secret)


@keys.command("revoke")
@click.argument("key_id")
@json_option
@pass_admin
@handle_errors
def revoke_key(admin: AdminContext, key_id: str, as_json: bool) -> None:
    """Revoke KEY_ID: the next request made with it is refused."""
    with admin.session() as session:
        row = auth.revoke_key(session, key_id)
        audit.record(
            session,
            action="api_key.revoke",
            object_type="api_key",
            object_id=row.id,
            organization_id=row.organization_id,
            actor=admin.actor,
            details={"prefix": row.prefix},
        )
        out = auth.key_dict(row)
    emit_object(out, as_json=as_json, title="API key revoked")
