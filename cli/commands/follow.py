"""``dorado jobs follow``: a job's live progress and its events as they arrive, ending with
the job's outcome as the exit code.

It polls ``GET /v1/fine_tuning/jobs/{id}`` (status, ``progress``, ``estimated_finish``) and the
job's events (metrics events carry losses and tokens/s); nothing here reads the database.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from rich.console import Group, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from cli.client import ApiError, ClientError, ConnectionFailed, DoradoClient
from cli.commands.output import (
    EXIT_INTERRUPTED,
    EXIT_JOB_CANCELLED,
    EXIT_JOB_FAILED,
    EXIT_JOB_PAUSED,
    EXIT_OK,
    console,
    echo_json,
    err_console,
    human_duration,
)
from core.jobs.status import FAILURE_HELP, FailureCode, JobStatus

#: The exit code of a follow that saw the job reach each status.
OUTCOME_EXIT_CODES: dict[str, int] = {
    JobStatus.SUCCEEDED.value: EXIT_OK,
    JobStatus.FAILED.value: EXIT_JOB_FAILED,
    JobStatus.CANCELLED.value: EXIT_JOB_CANCELLED,
    JobStatus.PAUSED.value: EXIT_JOB_PAUSED,
}
# Once the job has been seen, how long an unanswering API is waited for before giving up.
RECONNECT_PATIENCE_S = 180.0
LEVEL_STYLES = {"warn": "yellow", "warning": "yellow", "error": "bold red"}


@dataclass
class Metrics:
    """The latest training figures seen in the job's metrics events."""

    step: int | None = None
    total_steps: int | None = None
    train_loss: float | None = None
    valid_loss: float | None = None
    tokens_per_second: float | None = None

    def update(self, data: dict[str, Any]) -> None:
        self.step = data.get("step", self.step)
        self.total_steps = data.get("total_steps", self.total_steps)
        self.train_loss = data.get("train_loss", self.train_loss)
        # Validation runs only now and then: keep the last value between runs.
        for key in ("full_valid_loss", "valid_loss"):
            if data.get(key) is not None:
                self.valid_loss = data[key]
                break
        if data.get("tokens_per_second") is not None:
            self.tokens_per_second = data["tokens_per_second"]


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def eta_text(job: dict[str, Any], now: float | None = None) -> str:
    finish = job.get("estimated_finish")
    if job.get("status") != JobStatus.RUNNING or not finish:
        return "-"
    return human_duration(finish - (time.time() if now is None else now))


def render(job: dict[str, Any], metrics: Metrics) -> RenderableType:
    """The live panel: status, a step bar, losses, throughput and ETA."""
    progress = job.get("progress") or {}
    step = progress.get("step", metrics.step) or 0
    total = progress.get("total_steps", metrics.total_steps)
    status = str(job.get("status"))
    if status == JobStatus.QUEUED and job.get("queue_position"):
        status += f" (position {job['queue_position']})"
    header = Text.assemble(
        (job["id"], "bold"), f"  {job.get('model')}  ", ("status: ", "dim"), (status, "bold cyan")
    )
    grid = Table.grid(padding=(0, 2))
    grid.add_row(
        ProgressBar(total=total or None, completed=step, width=40),
        f"step {step}/{total or '?'}",
    )
    figures = Table.grid(padding=(0, 3))
    figures.add_row(
        f"loss {_fmt(metrics.train_loss, '.4f')}",
        f"val loss {_fmt(metrics.valid_loss, '.4f')}",
        f"{_fmt(metrics.tokens_per_second, ',.0f')} tokens/s",
        f"ETA {eta_text(job)}",
    )
    return Group(header, grid, figures)


def event_line(event: dict[str, Any]) -> Text:
    when = time.strftime("%H:%M:%S", time.localtime(event.get("created_at") or 0))
    style = LEVEL_STYLES.get(str(event.get("level")), "")
    return Text.assemble((when, "dim"), "  ", (str(event.get("message")), style))


def outcome_lines(job: dict[str, Any]) -> list[Text]:
    """What the job came to, and for a failure what the user can do about it."""
    status = job.get("status")
    if status == JobStatus.SUCCEEDED:
        tokens = job.get("trained_tokens")
        return [
            Text.assemble(
                ("succeeded", "bold green"),
                f": {job.get('fine_tuned_model')}",
                f" ({tokens:,} trained tokens)" if tokens else "",
            ),
            Text(f"Download the adapter: dorado adapters download {job['id']}"),
        ]
    if status == JobStatus.FAILED:
        error = job.get("error") or {}
        lines = [
            Text.assemble(("failed", "bold red"), f": {error.get('message')} [{error.get('code')}]")
        ]
        try:
            lines.append(Text(FAILURE_HELP[FailureCode(error.get("code"))], style="dim"))
        except (ValueError, KeyError):
            pass
        return lines
    if status == JobStatus.PAUSED:
        return [
            Text.assemble(
                ("paused", "bold yellow"), f": dorado jobs resume {job['id']} --follow goes on"
            )
        ]
    return [Text.assemble((str(status), "bold yellow"))]


def _stop(live: Live | None) -> None:
    if live is None or not live.is_started:
        return
    live.stop()
    if not live.console.is_terminal:  # rich ends the last frame with a newline on a terminal only
        live.console.line()


class _Outage:
    """Rides out an API that stops answering for a while (a restart, a database failover: it
    answers 503 then) once the job has been seen; a longer outage ends the follow."""

    def __init__(self, patience: float) -> None:
        self.patience = patience
        self.since: float | None = None

    def tolerate(self, exc: ClientError) -> bool:
        transient = isinstance(exc, ConnectionFailed) or (
            isinstance(exc, ApiError) and exc.status >= 500
        )
        if not transient:
            return False
        now = time.monotonic()
        if self.since is None:
            self.since = now
            err_console.print(
                f"lost the API ({exc.message}); retrying for up to {self.patience:.0f} s",
                style="yellow",
                soft_wrap=True,
            )
        return now - self.since <= self.patience

    def over(self) -> None:
        if self.since is not None:
            err_console.print("the API answers again", style="yellow")
        self.since = None


def follow_job(
    client: DoradoClient,
    job_id: str,
    *,
    interval: float = 2.0,
    as_json: bool = False,
    patience: float = RECONNECT_PATIENCE_S,
) -> int:
    """Show the job until it ends (or pauses); the exit code for its outcome."""
    metrics = Metrics()
    last_seen: str | None = None
    outage = _Outage(patience)
    job: dict[str, Any] | None = None
    live = None if as_json else Live(console=console, refresh_per_second=4, transient=False)
    try:
        if live is not None:
            live.start()
        while True:
            try:
                # The job first: its final status is then never read before its last events.
                job = client.get(f"/fine_tuning/jobs/{job_id}")
                events = client.new_events(job_id, last_seen)
            except ClientError as exc:
                if job is None or not outage.tolerate(exc):
                    raise
                time.sleep(interval)
                continue
            outage.over()
            for event in events:
                if event.get("type") == "metrics" and isinstance(event.get("data"), dict):
                    metrics.update(event["data"])
                if as_json:
                    echo_json(event, compact=True)
                elif live is not None:
                    live.console.print(event_line(event))
            if events:
                last_seen = events[-1]["id"]
            if live is not None:
                live.update(render(job, metrics), refresh=True)
            if job.get("status") in OUTCOME_EXIT_CODES:
                break
            time.sleep(interval)
    except KeyboardInterrupt:
        _stop(live)
        console.print(f"Stopped following; the job goes on. Again: dorado jobs follow {job_id}")
        return EXIT_INTERRUPTED
    finally:
        _stop(live)
    if as_json:
        echo_json(job, compact=True)
    else:
        for line in outcome_lines(job):
            console.print(line)
    return OUTCOME_EXIT_CODES[str(job["status"])]
