"""Rendering for the ``dorado`` user commands, as ``dorado-admin`` renders: rich tables and
progress for people, ``--json`` for scripts, and one way to fail (a line on stderr, a
documented exit code)."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any, NoReturn

import click
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table
from rich.text import Text

# Exit codes (docs/cli.md "Exit codes"). 2 is click's own for bad usage.
EXIT_OK = 0
EXIT_API_ERROR = 1  # the API refused the request (its message is shown)
EXIT_SETUP = 3  # no API key, an unreadable config file, or the server cannot be reached
EXIT_UNEXPECTED = 4  # a bug: the cause is shown instead of a traceback
EXIT_JOB_FAILED = 5  # `jobs follow` / `jobs create --follow`: the job failed
EXIT_JOB_CANCELLED = 6  # ... the job was cancelled
EXIT_JOB_PAUSED = 7  # ... the job was paused (resume it, then follow again)
EXIT_INTERRUPTED = 130  # Ctrl-C while following: the job itself goes on

# Names copied into the next command: never folded over two lines in a table.
UNFOLDED = ("id",)

json_option = click.option(
    "--json", "as_json", is_flag=True, help="Print machine-readable JSON (no tables or bars)."
)

# No markup: messages, ids, paths and JSON cells print as they are ("[q_proj]" included).
console = Console(highlight=False, markup=False)
err_console = Console(stderr=True, highlight=False, markup=False)


def to_json(data: Any) -> str:
    return json.dumps(data, indent=2)


def echo_json(data: Any, *, compact: bool = False) -> None:
    """One JSON document on stdout (``compact``: on one line, for a stream of them)."""
    click.echo(json.dumps(data, separators=(",", ":")) if compact else to_json(data))


def timestamp(value: int | float | None) -> str:
    """A unix time as local ``YYYY-MM-DD HH:MM:SS`` (``-`` for none)."""
    if value is None:
        return "-"
    return datetime.fromtimestamp(value).strftime("%Y-%m-%d %H:%M:%S")


def human_duration(seconds: float) -> str:
    """``42s``, ``3m12s``, ``2h05m``: compact durations."""
    seconds = int(max(seconds, 0))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, dict | list):
        return json.dumps(value)
    return str(value)


def print_table(
    rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str]], *, empty: str
) -> None:
    """``rows`` as a table of ``columns`` ((key, header) pairs)."""
    if not rows:
        console.print(empty)
        return
    out = Table(header_style="bold")
    for key, header in columns:
        if key in UNFOLDED:
            width = max(len(cell(row.get(key))) for row in rows)
            out.add_column(header, no_wrap=True, min_width=width)
        else:
            out.add_column(header, overflow="fold")
    for row in rows:
        out.add_row(*(cell(row.get(key)) for key, _ in columns))
    console.print(out)


def print_object(obj: dict[str, Any], *, title: str | None = None) -> None:
    """One record as a two-column key/value table."""
    out = Table(title=title, title_justify="left", show_header=False)
    out.add_column(style="bold")
    out.add_column(overflow="fold")
    for key, value in obj.items():
        out.add_row(key, cell(value))
    console.print(out)


def fail(message: str, *, code: int = EXIT_API_ERROR, details: Sequence[str] = ()) -> NoReturn:
    """``error: message`` (and indented detail lines) on stderr, then exit with ``code``."""
    err_console.print(Text.assemble(("error:", "bold red"), f" {message}"), soft_wrap=True)
    for line in details:
        err_console.print(f"  {line}", soft_wrap=True)
    sys.exit(code)


@contextmanager
def transfer_bar(
    description: str, *, enabled: bool, after_done: str | None = None
) -> Iterator[Callable[[int, int | None], None]]:
    """A rich progress bar for an upload or download; yields the callback to advance it.
    ``after_done`` replaces the description once every byte went (the server still works).
    Disabled (``--json``, or not a terminal) it yields a callback that does nothing."""
    if not enabled or not err_console.is_terminal:
        yield lambda done, total: None
        return
    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=err_console,
        transient=True,
    )
    task = bar.add_task(description, total=None)
    last = [0.0]

    def advance(done: int, total: int | None) -> None:
        now = time.monotonic()
        if total is not None and done < total and now - last[0] < 0.05:
            return  # a 64 KiB chunk at a time: redraw at most 20 times a second
        last[0] = now
        bar.update(task, completed=done, total=total)
        if total is not None and done >= total and after_done:
            bar.update(task, description=after_done)

    with bar:
        yield advance
