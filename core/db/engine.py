"""Engine and session factory, shared by the API, the worker and the CLI."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache

from sqlalchemy import MetaData, create_engine, event
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
from sqlalchemy.pool import NullPool

from core.database_url import masked, normalize_database_url, parse_database_url
from core.errors import DatabaseUnavailable

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def _sqlite_pragmas(dbapi_connection, _record) -> None:  # pragma: no cover - driver hook
    cursor = dbapi_connection.cursor()
    # WAL lets the API read while a worker writes; busy_timeout waits instead of failing
    # with "database is locked" when two processes write at once.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


@lru_cache(maxsize=8)
def get_engine(url: str) -> Engine:
    """One pooled engine per database URL and process (PostgreSQL URLs in any spelling
    ``core.database_url`` accepts)."""
    url = normalize_database_url(url)
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=10)


#: Seconds a start-up check waits for PostgreSQL (a firewalled host never answers).
CHECK_CONNECT_TIMEOUT = 5


def check_database(url: str, variable: str = "DORADO_DATABASE_URL") -> None:
    """Connect once to a server database, so that a wrong host or port stops a process at
    start with one line (DatabaseUnavailable) instead of a traceback at its first query.

    SQLite is not checked: its file is created on first use.
    """
    url = normalize_database_url(url)
    if url.startswith("sqlite"):
        return
    query = parse_database_url(url).query
    timeout = {} if "connect_timeout" in query else {"connect_timeout": CHECK_CONNECT_TIMEOUT}
    engine = create_engine(url, poolclass=NullPool, connect_args=timeout)
    try:
        with engine.connect():
            pass
    except OperationalError as exc:
        lines = str(exc.orig or exc).strip().splitlines() or ["no answer"]
        raise DatabaseUnavailable(
            f"{variable}: cannot connect to {masked(url)} ({lines[0].strip()}); check the "
            "host, port, database name and credentials, and that PostgreSQL is running"
        ) from None
    finally:
        engine.dispose()


@lru_cache(maxsize=8)
def _session_factory(url: str) -> sessionmaker[Session]:
    return sessionmaker(bind=get_engine(url), expire_on_commit=False)


def new_session(url: str) -> Session:
    return _session_factory(url)()


@contextmanager
def session_scope(url: str) -> Iterator[Session]:
    """A unit of work: commits on success, rolls back on any exception."""
    session = new_session(url)
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()
