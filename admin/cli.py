"""``dorado-admin``: the root command group. Each command group lives in its own module
under ``admin/commands``; this file only wires them in."""

from __future__ import annotations

import click

from admin.commands import audit, keys, orgs
from admin.commands import gc as gc_commands
from admin.commands import jobs as job_commands
from admin.commands import models as model_commands
from admin.commands import queue as queue_commands
from admin.commands import stats as stats_commands
from admin.commands import webhooks as webhook_commands
from admin.commands import workers as worker_commands
from admin.context import AdminContext
from core.settings import load_settings


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--database-url",
    envvar="DORADO_DATABASE_URL",
    default=None,
    help="Database to operate on (default: DORADO_DATABASE_URL / DORADO_HOME's).",
)
@click.pass_context
def main(ctx: click.Context, database_url: str | None) -> None:
    """Operate a Dorado deployment: the queue, jobs, workers, models and organizations.

    Storage settings (DORADO_STORAGE_URL, DORADO_S3_*) come from the environment.
    """
    ctx.obj = AdminContext(load_settings()).with_database_url(database_url)


main.add_command(orgs.orgs)
main.add_command(keys.keys)
main.add_command(audit.audit)
main.add_command(model_commands.models)
main.add_command(gc_commands.gc_command)
main.add_command(stats_commands.stats_command)
main.add_command(queue_commands.queue_command)
main.add_command(job_commands.jobs_group)
main.add_command(worker_commands.workers_group)
main.add_command(webhook_commands.webhooks)
