"""What every ``dorado-admin`` command receives: settings, the database and who is acting."""

from __future__ import annotations

import getpass
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import click
from sqlalchemy.orm import Session

from core.db.engine import session_scope
from core.settings import Settings


@dataclass(frozen=True)
class AdminContext:
    settings: Settings

    @property
    def database_url(self) -> str:
        return self.settings.database_url

    @property
    def actor(self) -> str:
        """The audit-log actor for actions taken from this console."""
        return f"cli:{_os_user()}"

    @contextmanager
    def session(self) -> Iterator[Session]:
        """One unit of work: commits on success, rolls back on error."""
        with session_scope(self.database_url) as session:
            yield session

    def with_database_url(self, url: str | None) -> AdminContext:
        if not url:
            return self
        return AdminContext(self.settings.model_copy(update={"database_url": url}))


def _os_user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no login name (containers without /etc/passwd entry)
        return "unknown"


def get_context() -> AdminContext:
    """The AdminContext of the running command (set by the root group)."""
    ctx = click.get_current_context()
    obj = ctx.find_object(AdminContext)
    if obj is None:
        raise click.UsageError("dorado-admin commands must run under the root group")
    return obj


pass_admin = click.make_pass_decorator(AdminContext)
