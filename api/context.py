"""Per-app and per-request plumbing: settings, object store, database session, caller."""

from __future__ import annotations

from dataclasses import dataclass

from flask import Flask, current_app, g
from sqlalchemy.orm import Session

from core.db.engine import new_session
from core.db.models import ApiKey
from core.settings import Settings
from core.storage.objects import ObjectStore, open_store


@dataclass
class Dorado:
    settings: Settings
    store: ObjectStore


def init_app(app: Flask, settings: Settings) -> None:
    app.extensions["dorado"] = Dorado(settings=settings, store=open_store(settings))

    @app.after_request
    def _commit(response):
        session: Session | None = g.pop("db", None)
        if session is not None:
            try:
                if response.status_code < 400:
                    session.commit()
                else:
                    session.rollback()
            finally:
                session.close()
        return response

    @app.teardown_request
    def _close(_exc):
        session: Session | None = g.pop("db", None)
        if session is not None:
            session.rollback()
            session.close()


def dorado() -> Dorado:
    return current_app.extensions["dorado"]


def db() -> Session:
    """The request's session; committed once after a successful response."""
    if "db" not in g:
        g.db = new_session(dorado().settings.database_url)
    return g.db


def commit_early() -> None:
    """Commit the request's work now instead of after the response.

    Only for a route that goes on to do something slow or irreversible outside the
    database: a transaction must not stay open through a long call to the inference service
    (on SQLite, the authentication step's write would lock out every worker for as long),
    and stored objects are deleted only once the rows that point at them are gone for good.
    A job that must be published commits through core.scheduling.wakeups instead.
    """
    db().commit()


def caller() -> ApiKey:
    return g.api_key
