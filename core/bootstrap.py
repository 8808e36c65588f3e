"""First-start set-up: schema, built-in model rows and the bootstrap API key."""

from __future__ import annotations

import logging

from sqlalchemy import func, select

from core.catalog import lookup as catalog
from core.db.engine import session_scope
from core.db.migrate import upgrade
from core.db.models import ApiKey
from core.settings import Settings
from core.tenancy import auth

log = logging.getLogger(__name__)

DEFAULT_ORG_NAME = "default"


def ensure_api_key(settings: Settings) -> str | None:
    """Make sure an organization can sign in. Returns a newly generated key (to print once),
    or None when ``DORADO_BOOTSTRAP_API_KEY`` was used or keys already exist."""
    with session_scope(settings.database_url) as session:
        if settings.bootstrap_api_key:
            if auth.find_key(session, settings.bootstrap_api_key) is None:
                org = auth.create_organization(session, DEFAULT_ORG_NAME, is_operator=True)
                auth.add_key(session, org, settings.bootstrap_api_key, name="bootstrap")
            return None
        if session.scalar(select(func.count()).select_from(ApiKey)):
            return None
        org = auth.create_organization(session, DEFAULT_ORG_NAME, is_operator=True)
        key = auth.generate_key()
        auth.add_key(session, org, key, name="bootstrap")
        return key


def prepare_database(settings: Settings) -> str | None:
    """Migrate to head, register built-in models, ensure a key. Returns a new key, if any."""
    settings.home.mkdir(parents=True, exist_ok=True)
    upgrade(settings.database_url)
    with session_scope(settings.database_url) as session:
        catalog.register_builtin_models(session)
    return ensure_api_key(settings)
