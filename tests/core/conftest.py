"""Fixtures shared by the core tests."""

from __future__ import annotations

import pytest

from core.db.migrate import upgrade


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request, tmp_path):
    """A migrated database, once on SQLite and once on PostgreSQL."""
    url = (
        f"sqlite:///{tmp_path / 'db.sqlite'}"
        if request.param == "sqlite"
        else request.getfixturevalue("postgres_url")
    )
    upgrade(url)
    return url
