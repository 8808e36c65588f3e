"""``dorado-admin gc``: delete stored objects that no database row needs any more."""

from __future__ import annotations

from datetime import timedelta

import click

from admin.context import AdminContext, pass_admin
from admin.output import (
    EXIT_FAILED,
    emit_rows,
    fail,
    handle_errors,
    human_bytes,
    json_option,
    to_json,
)
from core.errors import InvalidRequest
from core.observability.stats import parse_period
from core.storage import gc
from core.storage.objects import open_store
from core.tenancy import audit

TABLE_ROWS = 200


def _period(text: str, param: str) -> timedelta:
    try:
        return parse_period(text, param=param, allow_zero=True)
    except InvalidRequest as exc:
        raise click.BadParameter(exc.message, param_hint=f"--{param.replace('_', '-')}") from None


@click.command("gc")
@click.option(
    "--dry-run", is_flag=True, help="Only list what would be deleted, and how many bytes."
)
@click.option(
    "--grace",
    default="24h",
    show_default=True,
    help="Never delete objects younger than this (uploads in flight).",
)
@click.option(
    "--keep-checkpoints",
    default=1,
    show_default=True,
    type=click.IntRange(0),
    help="Checkpoints kept per job once it finished --checkpoint-age ago.",
)
@click.option(
    "--checkpoint-age",
    default="7d",
    show_default=True,
    help="Finished jobs older than this keep only --keep-checkpoints checkpoints.",
)
@json_option
@pass_admin
@handle_errors
def gc_command(
    admin: AdminContext,
    dry_run: bool,
    grace: str,
    keep_checkpoints: int,
    checkpoint_age: str,
    as_json: bool,
) -> None:
    """Delete objects no row points to (deleted files and jobs, failed jobs' leftovers,
    checkpoints beyond retention, removed models). Final adapters of succeeded jobs, files
    and everything of unfinished jobs are always kept."""
    policy = gc.GcPolicy(
        grace=_period(grace, "grace"),
        keep_checkpoints=keep_checkpoints,
        checkpoint_age=_period(checkpoint_age, "checkpoint_age"),
    )
    report = gc.run(admin.database_url, open_store(admin.settings), policy, dry_run=dry_run)
    if not dry_run:
        with admin.session() as session:
            audit.record(
                session,
                action="storage.gc",
                object_type="object_store",
                object_id="gc",
                organization_id=None,
                actor=admin.actor,
                details=gc.audit_details(report),
            )
    if as_json:
        click.echo(to_json(report.as_dict()))
    else:
        _print(report)
    if report.errors:
        fail(
            f"{len(report.errors)} object(s) could not be deleted: {report.errors[0]}",
            code=EXIT_FAILED,
        )


def _print(report: gc.GcReport) -> None:
    verb = "Would delete" if report.dry_run else "Deleted"
    rows = [
        {"key": g.key, "size": human_bytes(g.bytes), "reason": g.reason}
        for g in report.objects[:TABLE_ROWS]
    ]
    emit_rows(
        rows,
        [("key", "Object"), ("size", "Size"), ("reason", "Why")],
        as_json=False,
        title=f"{verb}: unreferenced objects",
        empty="No unreferenced objects.",
    )
    if len(report.objects) > TABLE_ROWS:
        click.echo(f"... and {len(report.objects) - TABLE_ROWS} more (use --json for all)")
    click.echo(
        f"{verb} {len(report.objects)} object(s), {human_bytes(report.bytes)} "
        f"({report.bytes} bytes); {len(report.checkpoints)} checkpoint(s) beyond retention; "
        f"kept {report.young_objects} unreferenced object(s) younger than the grace period; "
        f"scanned {report.scanned_objects} object(s), {human_bytes(report.scanned_bytes)}."
    )
