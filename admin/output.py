"""Rendering for ``dorado-admin``: rich tables for people, ``--json`` for scripts, and one
way to fail (a clear message on stderr and a non-zero exit).

Values shown here come from tenants (key names, file names, model names, error messages that
quote them), so they are rendered as rich ``Text``, never parsed as markup: a key named ``[/]``
must not crash a listing, nor ``[link=...]`` become a clickable link in the operator's
terminal. Control characters (terminal escape sequences, bidirectional overrides) are shown
escaped, not sent to the terminal.
"""

from __future__ import annotations

import functools
import json
import re
import sys
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any, NoReturn, TypeVar

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

from core.errors import DoradoError

F = TypeVar("F", bound=Callable[..., Any])

# Exit codes: 1 = the action is not possible (unknown object, illegal state), 2 = usage
# (click's own), 3 = anything unexpected.
EXIT_FAILED = 1
EXIT_UNEXPECTED = 3

json_option = click.option(
    "--json", "as_json", is_flag=True, help="Print machine-readable JSON instead of a table."
)


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return int(value.timestamp())
    if isinstance(value, timedelta):
        return int(value.total_seconds())
    return value


# C0/C1 control characters but tab and newline (ESC starts terminal escape sequences, CR
# overwrites the line) and the bidirectional overrides that make a name read differently.
_UNPRINTABLE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def plain(value: object) -> Text:
    """``value`` as text shown as it is: no markup, control characters escaped (``\\x1b``).

    Use it for anything a tenant (or any user) chose.
    """
    return Text(_UNPRINTABLE.sub(lambda m: m[0].encode("unicode_escape").decode(), str(value)))


def _cell(value: Any) -> Text:
    if value is None:
        return Text("-")
    if isinstance(value, datetime):
        return Text(value.strftime("%Y-%m-%d %H:%M:%S"))
    if isinstance(value, timedelta):
        return Text(human_duration(value.total_seconds()))
    if isinstance(value, bool):
        return Text("yes" if value else "no")
    return plain(value)


def human_duration(seconds: float) -> str:
    """``42s``, ``3m12s``, ``2h05m``, ``3d04h``: compact ages for tables."""
    seconds = int(max(seconds, 0))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    if seconds < 86400:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d{seconds % 86400 // 3600:02d}h"


def human_bytes(size: int | None) -> str:
    """``512 B``, ``1.5 KiB``, ``3.2 GiB``: sizes for tables."""
    if size is None:
        return "-"
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"


def to_json(data: Any) -> str:
    return json.dumps(data, default=_jsonable, indent=2, sort_keys=False)


def table(
    rows: Sequence[dict[str, Any]],
    columns: Sequence[tuple[str, str]],
    *,
    title: str | None = None,
    empty: str = "Nothing to show.",
) -> Table | str:
    """A rich Table of ``rows`` showing ``columns`` ((key, header) pairs)."""
    if not rows:
        return empty
    out = Table(title=_title(title), title_justify="left", header_style="bold")
    for _, header in columns:
        out.add_column(header, overflow="fold")
    for row in rows:
        out.add_row(*(_cell(row.get(key)) for key, _ in columns))
    return out


def _title(title: str | None) -> Text | None:
    # Titles quote arguments ("Keys of <org id>"): plain text too.
    if title is None:
        return None
    shown = plain(title)
    shown.style = "table.title"
    return shown


def emit_rows(
    rows: Sequence[dict[str, Any]],
    columns: Sequence[tuple[str, str]],
    *,
    as_json: bool,
    title: str | None = None,
    empty: str = "Nothing to show.",
) -> None:
    """Print ``rows`` as a table, or as a JSON array of the full row dicts."""
    if as_json:
        click.echo(to_json(list(rows)))
        return
    Console().print(table(rows, columns, title=title, empty=empty))


def emit_object(obj: dict[str, Any], *, as_json: bool, title: str | None = None) -> None:
    """Print one record as a two-column key/value table, or as a JSON object."""
    if as_json:
        click.echo(to_json(obj))
        return
    out = Table(title=_title(title), title_justify="left", show_header=False)
    out.add_column(style="bold")
    out.add_column(overflow="fold")
    for key, value in obj.items():
        shown = plain(to_json(value)) if isinstance(value, dict | list) else _cell(value)
        out.add_row(plain(key), shown)
    Console().print(out)


def emit_message(message: str, *, as_json: bool, **data: Any) -> None:
    """A one-line confirmation; with ``--json`` an object ``{"message": ..., **data}``."""
    if as_json:
        click.echo(to_json({"message": message, **data}))
    else:
        Console().print(plain(message))


def fail(message: str, *, code: int = EXIT_FAILED) -> NoReturn:
    """Print ``error: message`` on stderr and exit non-zero."""
    Console(stderr=True).print(Text.assemble(("error:", "bold red"), " ", plain(message)))
    sys.exit(code)


def handle_errors(func: F) -> F:
    """Turn domain errors into ``fail`` (exit 1) and anything unexpected into exit 3."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except DoradoError as exc:
            fail(exc.message)
        except click.exceptions.ClickException:
            raise
        except (click.exceptions.Exit, click.exceptions.Abort, SystemExit):
            raise
        except Exception as exc:  # the operator sees the cause, not a traceback
            fail(f"{type(exc).__name__}: {exc}", code=EXIT_UNEXPECTED)

    return wrapper  # type: ignore[return-value]
