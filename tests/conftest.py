"""Shared fixtures: real PostgreSQL, Redis and an S3-protocol server on loopback."""

from __future__ import annotations

import itertools
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
PG_ADMIN_URL = os.environ.get(
    "DORADO_TEST_PG_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"
)
REDIS_URL = os.environ.get("DORADO_TEST_REDIS_URL", "redis://127.0.0.1:6379")
# Built models are kept between runs (SmolLM2's conversion takes ~30 s); safe to delete.
MODEL_CACHE = Path(os.environ.get("DORADO_TEST_MODEL_CACHE", ROOT / ".dorado-test" / "models"))


@contextmanager
def fresh_postgres_database(prefix: str = "dorado_test") -> Iterator[str]:
    """Create an empty PostgreSQL database, yield its URL, drop it (connections included)."""
    import sqlalchemy as sa

    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    try:
        yield url
    finally:
        from core.db.engine import get_engine

        get_engine(url).dispose()
        drop_postgres_database(admin, name)
        admin.dispose()


def drop_postgres_database(admin, name: str) -> None:
    """Drop a test database even while a straggler (a pool thread finishing a write) holds it.

    WITH (FORCE) ends the sessions and locks the database out in one step, so a thread that
    reconnects between a separate pg_terminate_backend and the DROP can no longer win the race.
    """
    import time

    import sqlalchemy as sa

    for attempt in range(5):
        try:
            with admin.connect() as conn:
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            return
        except sa.exc.OperationalError:
            if attempt == 4:
                raise
            time.sleep(0.5 * (attempt + 1))


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test, dropped afterwards."""
    with fresh_postgres_database() as url:
        yield url


_REDIS_DATABASES = itertools.count(os.getpid())


@pytest.fixture
def redis_url() -> Iterator[str]:
    """A Redis database number of its own, flushed before and after."""
    import redis

    # The next of databases 11-15 in turn: a process a failed test left behind, still
    # consuming from its broker database, cannot take the next test's messages.
    url = f"{REDIS_URL}/{11 + next(_REDIS_DATABASES) % 5}"
    client = redis.Redis.from_url(url)
    client.flushdb()
    yield url
    client.flushdb()
    client.close()


@pytest.fixture
def s3_server() -> Iterator[dict[str, str]]:
    """moto's S3 server on a free loopback port, with a bucket; yields client settings."""
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    creds = {
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
    )
    client.create_bucket(Bucket="dorado-test")
    try:
        yield {"endpoint": endpoint, "bucket": "dorado-test", **creds}
    finally:
        server.stop()
