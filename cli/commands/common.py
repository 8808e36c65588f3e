"""What every user command shares: the ``--base-url`` option, a connected client, and the
translation of client errors into one line and an exit code."""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Callable
from typing import Any, TypeVar

import click

from cli.client import (
    ApiError,
    ClientError,
    ConfigError,
    ConnectionFailed,
    DoradoClient,
    debug_logging,
)
from cli.client import load_config as _load_config
from cli.commands.output import EXIT_API_ERROR, EXIT_SETUP, EXIT_UNEXPECTED, fail

F = TypeVar("F", bound=Callable[..., Any])

base_url_option = click.option(
    "--base-url",
    default=None,
    metavar="URL",
    help="The Dorado API (default: DORADO_BASE_URL, base_url in the config file, "
    "or http://127.0.0.1:8000).",
)


def problem_lines(error: ApiError) -> list[str]:
    """``line N: message`` for each problem of a rejected file (the API lists the first 20)."""
    lines = [f"line {p.get('line')}: {p.get('message')}" for p in error.problems]
    more = re.search(r"\(and \d+ more\)$", error.message)
    return lines + [more.group(0)] if more and lines else lines


def headline(error: ApiError) -> str:
    """The error's first sentence when its problems follow as lines of their own (the API's
    message for a rejected file also lists them inline), else the whole message."""
    text = error.message.partition(". ")[0] if error.problems else error.message
    return text + (f" [{error.code}]" if error.code else "")


def _quiet_http_logs() -> None:
    # The launcher configures INFO logging for the services; a user's terminal wants answers,
    # not a log line per request (DORADO_LOG_LEVEL=DEBUG shows them again).
    if not debug_logging():
        for name in ("httpx2", "httpcore2"):
            logging.getLogger(name).setLevel(logging.WARNING)


def api_command(func: F) -> F:
    """Give the command a ``client`` built from ``--base-url`` and the user's settings, and
    turn every failure into one line on stderr and a documented exit code."""

    @base_url_option
    @functools.wraps(func)
    def wrapper(*args: Any, base_url: str | None, **kwargs: Any) -> Any:
        _quiet_http_logs()
        try:
            with DoradoClient(_load_config(base_url)) as client:
                return func(*args, client=client, **kwargs)
        except ApiError as exc:
            fail(headline(exc), code=EXIT_API_ERROR, details=problem_lines(exc))
        except (ConfigError, ConnectionFailed) as exc:
            fail(exc.message, code=EXIT_SETUP)
        except ClientError as exc:
            fail(exc.message, code=EXIT_API_ERROR)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except SystemExit:
            raise
        except OSError as exc:  # a local file that cannot be read or written
            fail(f"{exc.strerror or exc}: {exc.filename}" if exc.filename else str(exc))
        except Exception as exc:  # the user sees the cause, not a traceback
            fail(f"{type(exc).__name__}: {exc}", code=EXIT_UNEXPECTED)

    return wrapper  # type: ignore[return-value]
