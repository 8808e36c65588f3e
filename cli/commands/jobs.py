"""``dorado jobs``: create, follow, list, show, cancel, pause and resume fine-tuning jobs."""

from __future__ import annotations

import sys
from typing import Any

import click

from cli.client import DoradoClient
from cli.commands.common import api_command
from cli.commands.follow import follow_job
from cli.commands.output import (
    console,
    echo_json,
    json_option,
    print_object,
    print_table,
    timestamp,
)

JOB_COLUMNS = [
    ("id", "ID"),
    ("model", "MODEL"),
    ("status", "STATUS"),
    ("progress_text", "PROGRESS"),
    ("fine_tuned_model", "FINE-TUNED MODEL"),
    ("created", "CREATED"),
]

follow_interval_option = click.option(
    "--interval",
    default=2.0,
    show_default=True,
    type=click.FloatRange(0.2, 60),
    help="Seconds between polls while following.",
)


@click.group("jobs")
def jobs_group() -> None:
    """Create and watch fine-tuning jobs."""


def _auto_int(value: str | None, name: str) -> int | str | None:
    if value is None or value == "auto":
        return value
    try:
        return int(value)
    except ValueError:
        raise click.BadParameter("a whole number or 'auto'", param_hint=name) from None


def _auto_float(value: str | None, name: str) -> float | str | None:
    if value is None or value == "auto":
        return value
    try:
        return float(value)
    except ValueError:
        raise click.BadParameter("a number or 'auto'", param_hint=name) from None


def _metadata(pairs: tuple[str, ...]) -> dict[str, str] | None:
    if not pairs:
        return None
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{pair!r} is not KEY=VALUE", param_hint="--metadata")
        out[key] = value
    return out


def job_request(
    *,
    model: str,
    training_file: str,
    validation_file: str | None,
    method: str,
    rank: int | None,
    alpha: int | None,
    dropout: float | None,
    target_modules: str | None,
    n_epochs: str | None,
    batch_size: str | None,
    learning_rate_multiplier: str | None,
    suffix: str | None,
    seed: int | None,
    metadata: tuple[str, ...] = (),
    extras: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``POST /v1/fine_tuning/jobs`` body for these options (unset ones left out, so the
    API's defaults apply and it alone validates the values)."""
    adapter: dict[str, Any] = {"type": method}
    for key, value in (("r", rank), ("alpha", alpha), ("dropout", dropout)):
        if value is not None:
            adapter[key] = value
    if target_modules is not None:
        adapter["target_modules"] = (
            target_modules
            if target_modules == "all-linear"
            else [m.strip() for m in target_modules.split(",") if m.strip()]
        )
    hyper = {
        "n_epochs": _auto_int(n_epochs, "--epochs"),
        "batch_size": _auto_int(batch_size, "--batch-size"),
        "learning_rate_multiplier": _auto_float(learning_rate_multiplier, "--lr-multiplier"),
    }
    body: dict[str, Any] = {
        "model": model,
        "training_file": training_file,
        "validation_file": validation_file,
        "adapter": adapter,
        "hyperparameters": {k: v for k, v in hyper.items() if v is not None} or None,
        "suffix": suffix,
        "seed": seed,
        "metadata": _metadata(metadata),
        **(extras or {}),
    }
    return {k: v for k, v in body.items() if v is not None}


def _summary(job: dict[str, Any]) -> dict[str, Any]:
    progress = job.get("progress") or {}
    error = job.get("error") or {}
    return {
        "id": job["id"],
        "model": job.get("model"),
        "status": job.get("status"),
        "progress": (
            f"{progress['step']}/{progress['total_steps']} ({progress['percent']}%)"
            if progress
            else None
        ),
        "queue_position": job.get("queue_position"),
        "adapter": job.get("adapter"),
        "hyperparameters": job.get("hyperparameters"),
        "training_file": job.get("training_file"),
        "validation_file": job.get("validation_file"),
        "fine_tuned_model": job.get("fine_tuned_model"),
        "trained_tokens": job.get("trained_tokens"),
        "error": f"{error.get('message')} [{error.get('code')}]" if error else None,
        "created": timestamp(job.get("created_at")),
        "finished": timestamp(job.get("finished_at")),
    }


def _show(job: dict[str, Any], as_json: bool, title: str | None = None) -> None:
    if as_json:
        echo_json(job)
    else:
        print_object(_summary(job), title=title)


@jobs_group.command("create")
@click.option("--model", required=True, help="Base model, e.g. tiny-random-llama.")
@click.option("--training-file", required=True, metavar="FILE_ID", help="An uploaded file id.")
@click.option("--validation-file", default=None, metavar="FILE_ID", help="Held-out file id.")
@click.option(
    "--method",
    type=click.Choice(["dora", "lora"]),
    default="dora",
    show_default=True,
    help="The PEFT adapter to train.",
)
@click.option("-r", "--rank", type=int, default=None, help="Adapter rank r (API default 16).")
@click.option("--alpha", type=int, default=None, help="Adapter alpha (API default 32).")
@click.option("--dropout", type=float, default=None, help="Adapter dropout (default 0).")
@click.option(
    "--target-modules",
    default=None,
    metavar="all-linear|M1,M2",
    help="Modules to adapt: all-linear (default) or a comma-separated list.",
)
@click.option("--epochs", "n_epochs", default=None, metavar="N|auto", help="Epochs.")
@click.option("--batch-size", default=None, metavar="N|auto", help="Examples per step.")
@click.option(
    "--lr-multiplier", "learning_rate_multiplier", default=None, metavar="X|auto", help="x base LR."
)
@click.option("--learning-rate", type=float, default=None, help="Absolute learning rate.")
@click.option("--max-seq-length", type=int, default=None, help="Tokens per example at most.")
@click.option("--suffix", default=None, help="Part of the fine-tuned model's name.")
@click.option("--seed", type=int, default=None, help="Seed for a reproducible run.")
@click.option("--metadata", multiple=True, metavar="KEY=VALUE", help="Tag the job (repeatable).")
@click.option("--checkpoint-every", type=int, default=None, help="Checkpoint every N steps.")
@click.option("--keep-checkpoints", type=int, default=None, help="Checkpoints kept.")
@click.option("--max-run-seconds", type=int, default=None, help="Fail the job past this.")
@click.option("--pool", default=None, help="Worker pool to run in.")
@click.option("--follow", is_flag=True, help="Then follow it (see `dorado jobs follow`).")
@follow_interval_option
@json_option
@api_command
def create(
    client: DoradoClient,
    learning_rate: float | None,
    max_seq_length: int | None,
    checkpoint_every: int | None,
    keep_checkpoints: int | None,
    max_run_seconds: int | None,
    pool: str | None,
    follow: bool,
    interval: float,
    as_json: bool,
    **options: Any,
) -> None:
    """Start a fine-tuning job on an uploaded file.

    With --follow, the exit code is the job's outcome (see `dorado jobs follow`)."""
    extras = {
        "learning_rate": learning_rate,
        "max_seq_length": max_seq_length,
        "checkpoint_every_n_steps": checkpoint_every,
        "keep_checkpoints": keep_checkpoints,
        "max_run_seconds": max_run_seconds,
        "pool": pool,
    }
    body = job_request(**options, extras={k: v for k, v in extras.items() if v is not None})
    job = client.post("/fine_tuning/jobs", body)
    if follow:
        if not as_json:
            console.print(f"Created {job['id']}; following it (Ctrl-C stops following only).")
        sys.exit(follow_job(client, job["id"], interval=interval, as_json=as_json))
    _show(job, as_json, title="Created")
    if not as_json:
        console.print(f"Follow it: dorado jobs follow {job['id']}")


@jobs_group.command("follow")
@click.argument("job_id")
@follow_interval_option
@json_option
@api_command
def follow(client: DoradoClient, job_id: str, interval: float, as_json: bool) -> None:
    """Live progress (step/total, losses, tokens/s, ETA) and events until the job ends.

    Exit code: 0 succeeded, 5 failed, 6 cancelled, 7 paused, 130 Ctrl-C (the job goes on).
    With --json: one event object per line, then the final job object."""
    sys.exit(follow_job(client, job_id, interval=interval, as_json=as_json))


@jobs_group.command("list")
@click.option("--limit", default=20, show_default=True, type=click.IntRange(1, 100))
@click.option("--status", default=None, help="Only jobs in this status.")
@click.option("--after", default=None, metavar="JOB_ID", help="Continue after this job.")
@json_option
@api_command
def list_jobs(
    client: DoradoClient, limit: int, status: str | None, after: str | None, as_json: bool
) -> None:
    """Your jobs, newest first."""
    page = client.get("/fine_tuning/jobs", limit=limit, status=status, after=after)
    if as_json:
        echo_json(page["data"])
        return
    rows = []
    for job in page["data"]:
        progress = job.get("progress")
        rows.append(
            {
                **job,
                "progress_text": f"{progress['percent']}%" if progress else None,
                "created": timestamp(job.get("created_at")),
            }
        )
    print_table(rows, JOB_COLUMNS, empty="No jobs.")
    if page.get("has_more") and rows:
        console.print(f"More: dorado jobs list --after {rows[-1]['id']}")


@jobs_group.command("get")
@click.argument("job_id")
@json_option
@api_command
def get(client: DoradoClient, job_id: str, as_json: bool) -> None:
    """One job: status, progress, adapter, hyperparameters, outcome."""
    _show(client.get(f"/fine_tuning/jobs/{job_id}"), as_json)


@jobs_group.command("cancel")
@click.argument("job_id")
@json_option
@api_command
def cancel(client: DoradoClient, job_id: str, as_json: bool) -> None:
    """Cancel a job (a running one stops at its next step)."""
    job = client.post(f"/fine_tuning/jobs/{job_id}/cancel")
    if as_json:
        echo_json(job)
    else:
        console.print(f"{job['id']}: {job['status']}")


@jobs_group.command("pause")
@click.argument("job_id")
@json_option
@api_command
def pause(client: DoradoClient, job_id: str, as_json: bool) -> None:
    """Pause a job (a running one checkpoints first); resume it later."""
    job = client.post(f"/fine_tuning/jobs/{job_id}/pause")
    if as_json:
        echo_json(job)
    else:
        note = " (pausing at its next step)" if job.get("pause_requested") else ""
        console.print(f"{job['id']}: {job['status']}{note}")


@jobs_group.command("resume")
@click.argument("job_id")
@click.option("--follow", is_flag=True, help="Then follow it.")
@follow_interval_option
@json_option
@api_command
def resume(client: DoradoClient, job_id: str, follow: bool, interval: float, as_json: bool) -> None:
    """Resume a paused job from its last checkpoint."""
    job = client.post(f"/fine_tuning/jobs/{job_id}/resume")
    if follow:
        sys.exit(follow_job(client, job["id"], interval=interval, as_json=as_json))
    if as_json:
        echo_json(job)
    else:
        console.print(f"{job['id']}: {job['status']}")
