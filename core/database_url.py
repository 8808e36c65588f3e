"""Database URLs as people write them, mapped to a driver that is installed here.

SQLAlchemy 2.1 reads a bare ``postgresql://`` as psycopg 3, and ``postgres://`` (Heroku, many
PaaS) not at all; the project installs psycopg2. Both spellings, and explicit drivers, become a
``postgresql+<driver>`` URL for a driver that can be imported.
"""

from __future__ import annotations

import importlib.util

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from core.errors import DatabaseUrlError

#: PostgreSQL drivers Dorado runs on, in order of preference: (SQLAlchemy name, module).
POSTGRES_DRIVERS = (("psycopg2", "psycopg2"), ("psycopg", "psycopg"))
POSTGRES_SCHEMES = ("postgresql", "postgres")
SUPPORTED = "sqlite:///PATH or postgresql://USER:PASSWORD@HOST:PORT/DATABASE"


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def parse_database_url(url: str) -> URL:
    """The URL parsed, or a DatabaseUrlError saying what a URL looks like."""
    try:
        return make_url(url)
    except ArgumentError:
        raise DatabaseUrlError(f"not a database URL; use {SUPPORTED}") from None


def masked(url: str) -> str:
    """The URL with its password hidden, for messages and logs."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<not a URL>"


def normalize_database_url(url: str) -> str:
    """``url`` with a PostgreSQL scheme mapped to an installed driver (SQLite unchanged).

    Raises DatabaseUrlError for another scheme, or for a driver that is not installed.
    """
    parsed = parse_database_url(url)
    backend, _, driver = parsed.drivername.partition("+")
    if backend == "sqlite":
        return url
    if backend not in POSTGRES_SCHEMES:
        raise DatabaseUrlError(f"unsupported database {backend!r}; use {SUPPORTED}")
    known = dict(POSTGRES_DRIVERS)
    if driver and driver not in known:
        raise DatabaseUrlError(
            f"unsupported PostgreSQL driver {driver!r}; write postgresql:// (uses psycopg2)"
        )
    if not driver:
        driver = next((name for name, module in POSTGRES_DRIVERS if _installed(module)), "")
        if not driver:
            raise DatabaseUrlError("no PostgreSQL driver is installed; pip install psycopg2-binary")
    elif not _installed(known[driver]):
        raise DatabaseUrlError(
            f"the {driver!r} driver is not installed; write postgresql:// (uses the installed "
            f"driver) or pip install {driver}"
        )
    return parsed.set(drivername=f"postgresql+{driver}").render_as_string(hide_password=False)
