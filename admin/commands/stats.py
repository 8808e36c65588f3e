"""``dorado-admin stats``: jobs, waits, run times, GPU-hours and tokens over a period."""

from __future__ import annotations

import click
from rich.console import Console

from admin.context import AdminContext, pass_admin
from admin.output import emit_rows, handle_errors, human_duration, json_option, to_json
from core.observability import stats
from core.tenancy.auth import get_organization


@click.command("stats")
@click.option(
    "--since",
    default="7d",
    show_default=True,
    help="The period: from this long ago until now (s, m, h, d, w).",
)
@click.option("--org", "org_id", help="Only this organization's jobs.")
@json_option
@pass_admin
@handle_errors
def stats_command(admin: AdminContext, since: str, org_id: str | None, as_json: bool) -> None:
    """Jobs by status, queue wait and run time percentiles (p50/p90/p99), GPU-hours and
    trained tokens per organization."""
    period = stats.period_ending_now(since)
    with admin.session() as session:
        if org_id:
            get_organization(session, org_id)
        data = stats.usage(session, period, org_id)
    if as_json:
        click.echo(to_json(data))
        return
    console = Console()
    console.print(
        f"[bold]Jobs created in the last {since}[/]: {data['jobs']}  "
        + "  ".join(f"{k}={v}" for k, v in data["jobs_by_status"].items())
    )
    rows = []
    for label, key in (("queue wait", "queue_wait_seconds"), ("run time", "run_time_seconds")):
        figures = data[key]
        rows.append(
            {
                "what": label,
                "count": figures["count"],
                **{
                    p: "-" if figures[p] is None else human_duration(figures[p])
                    for p in ("p50", "p90", "p99")
                },
            }
        )
    emit_rows(
        rows,
        [("what", ""), ("count", "Jobs"), ("p50", "p50"), ("p90", "p90"), ("p99", "p99")],
        as_json=False,
        title="Percentiles",
    )
    orgs = [
        {**o, "statuses": ", ".join(f"{k}={v}" for k, v in o["by_status"].items())}
        for o in data["organizations"]
    ]
    emit_rows(
        orgs,
        [
            ("organization_id", "Organization"),
            ("name", "Name"),
            ("jobs", "Jobs"),
            ("statuses", "By status"),
            ("run_hours", "Run hours"),
            ("gpu_hours", "GPU-hours"),
            ("trained_tokens", "Trained tokens"),
        ],
        as_json=False,
        title="Per organization",
        empty="No jobs in this period.",
    )
