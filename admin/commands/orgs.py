"""``dorado-admin orgs create|list|set-quota|set-wandb-key``: organizations, their quotas and
tracker credentials."""

from __future__ import annotations

import click

from admin.context import AdminContext, pass_admin
from admin.output import emit_object, emit_rows, handle_errors, json_option
from core.tenancy import audit, auth, tracker_credentials

COLUMNS = [
    ("id", "ID"),
    ("name", "NAME"),
    ("is_operator", "OPERATOR"),
    ("active_keys", "KEYS"),
    ("max_running_jobs", "MAX RUNNING"),
    ("max_queued_jobs", "MAX QUEUED"),
    ("storage_quota_bytes", "STORAGE QUOTA (B)"),
]


class _Quota(click.ParamType):
    """A non-negative integer, or ``none``/``unlimited`` for no limit."""

    name = "N|none"

    def convert(self, value, param, ctx):
        if value is auth.UNSET or value is None or isinstance(value, int):
            return value
        if str(value).lower() in ("none", "unlimited", "null"):
            return None
        try:
            number = int(value)
        except ValueError:
            self.fail(f"{value!r} is not an integer or 'none'", param, ctx)
        if number < 0:
            self.fail("must not be negative", param, ctx)
        limit = auth.QUOTA_MAXIMUM[param.name] if param is not None else None
        if limit is not None and number > limit:
            self.fail(f"must be at most {limit}", param, ctx)
        return number


QUOTA = _Quota()


def _quota_options(func):
    for flag, help_text in reversed(
        (
            ("--max-running-jobs", "Jobs of the organization running at once."),
            ("--max-queued-jobs", "Jobs of the organization waiting in the queue."),
            ("--storage-quota-bytes", "Bytes of files the organization may store."),
        )
    ):
        func = click.option(
            flag, type=QUOTA, default=auth.UNSET, help=help_text + " 'none' removes the limit."
        )(func)
    return func


@click.group("orgs")
def orgs() -> None:
    """Organizations: create, list, set quotas."""


@orgs.command("list")
@json_option
@pass_admin
@handle_errors
def list_orgs(admin: AdminContext, as_json: bool) -> None:
    """Every organization with its quotas and number of active keys."""
    with admin.session() as session:
        counts = auth.active_key_counts(session)
        rows = [
            auth.organization_dict(o, active_keys=counts.get(o.id, 0))
            for o in auth.list_organizations(session)
        ]
    emit_rows(rows, COLUMNS, as_json=as_json, title="Organizations", empty="No organizations.")


@orgs.command("create")
@click.argument("name")
@click.option("--operator", is_flag=True, help="May use /v1/admin and dorado-admin's API.")
@_quota_options
@json_option
@pass_admin
@handle_errors
def create_org(admin: AdminContext, name: str, operator: bool, as_json: bool, **quotas) -> None:
    """Create an organization called NAME (then give it a key with `keys create`)."""
    with admin.session() as session:
        org = auth.create_organization(
            session,
            name,
            is_operator=operator,
            max_queued_jobs=admin.settings.default_max_queued_jobs or None,
        )
        auth.set_quotas(session, org.id, **quotas)
        set_quotas = {k: v for k, v in quotas.items() if v is not auth.UNSET}
        audit.record(
            session,
            action="organization.create",
            object_type="organization",
            object_id=org.id,
            organization_id=org.id,
            actor=admin.actor,
            details={"name": name, "is_operator": operator, **set_quotas},
        )
        out = auth.organization_dict(org, active_keys=0)
    emit_object(out, as_json=as_json, title="Organization created")


@orgs.command("set-quota")
@click.argument("org_id")
@_quota_options
@json_option
@pass_admin
@handle_errors
def set_quota(admin: AdminContext, org_id: str, as_json: bool, **quotas) -> None:
    """Change ORG_ID's quotas (only the options given)."""
    changes = {k: v for k, v in quotas.items() if v is not auth.UNSET}
    if not changes:
        raise click.UsageError(
            "give at least one of --max-running-jobs, --max-queued-jobs, --storage-quota-bytes"
        )
    with admin.session() as session:
        org = auth.set_quotas(session, org_id, **changes)
        audit.record(
            session,
            action="organization.set_quota",
            object_type="organization",
            object_id=org.id,
            organization_id=org.id,
            actor=admin.actor,
            details=changes,
        )
        out = auth.organization_dict(org)
    emit_object(out, as_json=as_json, title="Quotas set")


@orgs.command("set-wandb-key")
@click.argument("org_id")
@click.option(
    "--api-key",
    envvar="WANDB_API_KEY",
    help="The key (else WANDB_API_KEY, else asked without echo: keep it out of the history).",
)
@click.option("--remove", is_flag=True, help="Remove the organization's key instead.")
@json_option
@pass_admin
@handle_errors
def set_wandb_key(
    admin: AdminContext, org_id: str, api_key: str | None, remove: bool, as_json: bool
) -> None:
    """Set ORG_ID's Weights & Biases API key, used by its jobs' wandb integrations (stored
    encrypted; docs/integrations.md)."""
    if not remove and not api_key:
        api_key = click.prompt("W&B API key", hide_input=True)
    with admin.session() as session:
        tracker_credentials.set_wandb_api_key(
            session,
            tracker_credentials.credentials_box(admin.settings),
            org_id,
            None if remove else api_key,
        )
        audit.record(
            session,
            action="organization.integrations.update",
            object_type="organization",
            object_id=org_id,
            organization_id=org_id,
            actor=admin.actor,
            details={"wandb_api_key": "removed" if remove else "set"},
        )
        out = tracker_credentials.integrations_settings_dict(session, org_id)
    emit_object(out, as_json=as_json, title="Integrations")
