"""``dorado-admin queue [--watch]``: running and queued jobs, in dispatch order."""

from __future__ import annotations

import time

import click
from rich.console import Console, Group
from rich.live import Live
from rich.text import Text

from admin.context import AdminContext, pass_admin
from admin.output import emit_rows, handle_errors, human_duration, json_option, table
from core.jobs.status import JobStatus
from core.scheduling import order as queue_order
from core.timeutil import utcnow

COLUMNS = [
    ("position", "#"),
    ("id", "JOB"),
    ("status", "STATUS"),
    ("pool", "POOL"),
    ("priority", "PRIO"),
    ("nodes", "NODES"),
    ("organization", "ORG"),
    ("model", "BASE MODEL"),
    ("adapter", "ADAPTER"),
    ("age", "AGE"),
    ("where", "WORKER / HELD"),
]


def queue_rows(admin: AdminContext, pool: str | None) -> list[dict]:
    """Running jobs first, then queued jobs by position in their pool's dispatch order."""
    with admin.session() as session:
        now = utcnow()
        entries = queue_order.dispatch_order(
            session, pool, heartbeat_seconds=admin.settings.worker_heartbeat_seconds
        )
        return [queue_order.queue_entry_dict(e, now) for e in entries]


def _for_humans(rows: list[dict]) -> list[dict]:
    return [
        {
            **row,
            "age": human_duration(row["age_seconds"]),
            "position": row["position"]
            if row["position"] is not None
            else ("run" if row["status"] == JobStatus.RUNNING else "held"),
            "where": _where(row),
        }
        for row in rows
    ]


def _where(row: dict) -> str | None:
    """The worker of a running job (a multi-node job's gang, leader first), else why held
    or, for a multi-node job, which hosts it waits for."""
    if row["status"] != JobStatus.RUNNING:
        return row["held"] or row["waiting"]
    return " + ".join(row["hosts"]) if row.get("hosts") else row["worker"]


def _render(rows: list[dict]):
    running = sum(1 for r in rows if r["status"] == JobStatus.RUNNING)
    title = f"Queue: {running} running, {len(rows) - running} queued"
    return table(
        _for_humans(rows),
        COLUMNS,
        title=title,
        empty="The queue is empty: no job is queued or running.",
    )


@click.command("queue")
@click.option("--pool", default=None, help="Only this worker pool.")
@click.option("--watch", is_flag=True, help="Refresh until Ctrl-C.")
@click.option(
    "--interval",
    type=click.FloatRange(min=0.2),
    default=2.0,
    show_default=True,
    help="Seconds between refreshes with --watch.",
)
@json_option
@pass_admin
@handle_errors
def queue_command(
    admin: AdminContext, pool: str | None, watch: bool, interval: float, as_json: bool
) -> None:
    """Running jobs, then queued jobs in the order workers will take them.

    The position (#) is per pool: highest priority first; within a priority the organization
    with the fewest running jobs, then the one served least recently; then the oldest job.
    A queued job whose organization is at its max_running_jobs quota is shown as held; a
    multi-node job that its pool's free hosts cannot start yet says how many it waits for.
    """
    if watch and as_json:
        raise click.UsageError("--watch is for people; use --json without it in scripts")
    if as_json:
        emit_rows(queue_rows(admin, pool), COLUMNS, as_json=True)
        return
    if not watch:
        Console().print(_render(queue_rows(admin, pool)))
        return
    try:
        with Live(_render(queue_rows(admin, pool)), auto_refresh=False) as live:
            while True:
                time.sleep(interval)
                stamp = Text(f"refreshed {utcnow():%H:%M:%S} UTC (Ctrl-C to stop)", style="dim")
                live.update(Group(_render(queue_rows(admin, pool)), stamp), refresh=True)
    except KeyboardInterrupt:
        pass
