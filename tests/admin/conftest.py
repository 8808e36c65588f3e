"""Fixtures shared by the admin tests."""

from __future__ import annotations

import pytest

from core.db.migrate import upgrade


@pytest.fixture(params=["postgres", "sqlite"])
def url(request, tmp_path):
    """A migrated database: PostgreSQL (FOR UPDATE SKIP LOCKED) and SQLite."""
    url = (
        request.getfixturevalue("postgres_url")
        if request.param == "postgres"
        else f"sqlite:///{tmp_path / 'db.sqlite'}"
    )
    upgrade(url)
    return url
