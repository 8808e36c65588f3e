"""``dorado-admin workers [list]``, ``workers drain|undrain|forget NAME``: the workers
registry."""

from __future__ import annotations

import click

from admin.context import AdminContext, pass_admin
from admin.output import emit_object, emit_rows, handle_errors, human_duration, json_option
from core.scheduling import workers
from core.tenancy import audit
from core.timeutil import utcnow

COLUMNS = [
    ("name", "NAME"),
    ("state", "STATE"),
    ("pool", "POOL"),
    ("gpus", "GPUS"),
    ("gpu_memory", "GPU MEM"),
    ("current_job_id", "JOB"),
    ("gang_label", "GANG"),
    ("hostname", "HOST"),
    ("heartbeat", "LAST HEARTBEAT"),
]


def _for_humans(rows: list[dict]) -> list[dict]:
    now = utcnow().timestamp()
    return [
        {
            **row,
            "gpu_memory": f"{row['gpu_memory_mb']} MiB" if row["gpu_memory_mb"] else None,
            "heartbeat": human_duration(now - row["last_heartbeat_at"]) + " ago",
            "gang_label": _gang_label(row["gang"]),
        }
        for row in rows
    ]


def _gang_label(gang: dict | None) -> str | None:
    """Where a worker stands in another worker's multi-node job: "node 1 of job (joined)"."""
    if not gang:
        return None
    return (
        f"node {gang['node_rank']} of {gang['job_id']} ({'joined' if gang['joined'] else 'booked'})"
    )


@click.group("workers", invoke_without_command=True)
@click.option("--all", "show_all", is_flag=True, help="Include stopped workers.")
@json_option
@click.pass_context
def workers_group(ctx: click.Context, show_all: bool, as_json: bool) -> None:
    """Training workers: list them (the default), drain, undrain or forget one."""
    if ctx.invoked_subcommand is None:
        ctx.invoke(list_workers, show_all=show_all, as_json=as_json)


@workers_group.command("list")
@click.option("--all", "show_all", is_flag=True, help="Include stopped workers.")
@json_option
@pass_admin
@handle_errors
def list_workers(admin: AdminContext, show_all: bool, as_json: bool) -> None:
    """Registered workers with their state (idle, busy, draining, drained, lost, stopped)."""
    beat = admin.settings.worker_heartbeat_seconds
    with admin.session() as session:
        rows = [
            workers.worker_dict(w, beat)
            for w in workers.list_workers(session, include_stopped=show_all)
        ]
    emit_rows(
        rows if as_json else _for_humans(rows),
        COLUMNS,
        as_json=as_json,
        title="Workers",
        empty="No worker has registered yet.",
    )


def _set_draining(admin: AdminContext, name: str, draining: bool, as_json: bool) -> None:
    with admin.session() as session:
        row = workers.set_draining(session, name, draining)
        audit.record(
            session,
            action="worker.drain" if draining else "worker.undrain",
            object_type="worker",
            object_id=name,
            organization_id=None,
            actor=admin.actor,
        )
        out = workers.worker_dict(row, admin.settings.worker_heartbeat_seconds)
    message = (
        f"Draining {name}: it finishes its current job and takes no new one"
        if draining
        else f"Undrained {name}: it takes jobs again"
    )
    emit_object({"message": message, **out}, as_json=as_json)


@workers_group.command("drain")
@click.argument("name")
@json_option
@pass_admin
@handle_errors
def drain(admin: AdminContext, name: str, as_json: bool) -> None:
    """Let worker NAME finish its current job and take no new one."""
    _set_draining(admin, name, True, as_json)


@workers_group.command("undrain")
@click.argument("name")
@json_option
@pass_admin
@handle_errors
def undrain(admin: AdminContext, name: str, as_json: bool) -> None:
    """Let a drained worker NAME take jobs again."""
    _set_draining(admin, name, False, as_json)


@workers_group.command("forget")
@click.argument("name")
@json_option
@pass_admin
@handle_errors
def forget(admin: AdminContext, name: str, as_json: bool) -> None:
    """Remove a stopped or lost worker NAME from the registry."""
    with admin.session() as session:
        workers.forget(session, name, admin.settings.worker_heartbeat_seconds)
        audit.record(
            session,
            action="worker.forget",
            object_type="worker",
            object_id=name,
            organization_id=None,
            actor=admin.actor,
        )
    emit_object(
        {"message": f"Forgot worker {name}", "name": name, "deleted": True}, as_json=as_json
    )
