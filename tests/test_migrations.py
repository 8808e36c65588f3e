"""The schema comes from Alembic, and the migrations match the models on both databases."""

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory

import core.db.models  # noqa: F401
from core.db.engine import Base, get_engine
from core.db.migrate import alembic_config, upgrade


def test_single_head():
    script = ScriptDirectory.from_config(alembic_config("sqlite://"))
    assert len(script.get_heads()) == 1


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'm.db'}"
    return request.getfixturevalue("postgres_url")


def test_upgrade_head_matches_models(database_url):
    upgrade(database_url)
    with get_engine(database_url).connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        diff = compare_metadata(context, Base.metadata)
    assert diff == []


def test_upgrade_is_idempotent(database_url):
    upgrade(database_url)
    upgrade(database_url)
