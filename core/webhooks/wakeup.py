"""Wake the delivery loop when an event is committed, instead of waiting for its next poll.

On PostgreSQL the outbox sends ``NOTIFY dorado_webhooks`` in the transaction that writes the
event (delivered only if it commits) and the loop LISTENs on a connection of its own. The
poll stays as the fallback (SQLite, a lost connection, retries coming due), so a missed
notification only costs latency.
"""

from __future__ import annotations

import logging
import select
import time
from typing import Any

from sqlalchemy import create_engine, text
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool

log = logging.getLogger(__name__)

CHANNEL = "dorado_webhooks"


def notify(session: Session) -> None:
    """Announce new deliveries when ``session`` commits (PostgreSQL only; else nothing)."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text(f"NOTIFY {CHANNEL}"))


class Wakeup:
    """Waits up to a timeout, returning early when a notification arrives."""

    def __init__(self, database_url: str) -> None:
        self._listen = database_url.startswith("postgresql")
        self._engine = create_engine(database_url, poolclass=NullPool) if self._listen else None
        self._conn: Any = None

    def _connection(self) -> Any:
        if self._conn is None and self._engine is not None:
            raw = self._engine.raw_connection()
            conn: Any = raw.driver_connection
            conn.autocommit = True
            with conn.cursor() as cursor:
                cursor.execute(f"LISTEN {CHANNEL}")
            self._raw, self._conn = raw, conn
        return self._conn

    def wait(self, timeout: float) -> None:
        if not self._listen:
            time.sleep(timeout)
            return
        try:
            conn = self._connection()
            if not conn.notifies:
                select.select([conn], [], [], timeout)
                conn.poll()
            conn.notifies.clear()
        except Exception as exc:  # the database went away: poll until it is back
            log.warning("webhook wake-up channel lost (%s); polling", exc)
            self.close()
            time.sleep(timeout)

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._raw.invalidate()
            except Exception:  # already gone
                pass
        self._conn = None
