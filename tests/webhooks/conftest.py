"""Fixtures for the webhook tests: a migrated PostgreSQL database, an organization with a
job, a real receiver on loopback."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
from sqlalchemy import update

from core.catalog import lookup as catalog
from core.db.engine import session_scope
from core.db.migrate import upgrade
from core.db.models import File, Job
from core.jobs import lifecycle as jobs
from core.jobs.hyperparams import AdapterConfig, Hyperparameters
from core.tenancy import auth
from core.timeutil import utcnow
from core.webhooks import endpoints
from core.webhooks.config import WebhookConfig
from core.webhooks.signing import SecretBox
from tests.webhooks.receiver import Receiver

PLATFORM_SECRET = "webhook-tests-platform-secret"
# Loopback receivers; short timeouts and retries so that a test waits seconds, not hours.
FAST = WebhookConfig(
    allow_private=True,
    timeout_seconds=2.0,
    max_attempts=5,
    retry_base_seconds=0.2,
    retry_max_seconds=1.0,
    concurrency=8,
    poll_seconds=0.05,
)


@pytest.fixture
def db_url(postgres_url: str) -> str:
    upgrade(postgres_url)
    with session_scope(postgres_url) as session:
        catalog.register_builtin_models(session)
    return postgres_url


@pytest.fixture
def box() -> SecretBox:
    return SecretBox(PLATFORM_SECRET)


@pytest.fixture
def resolver(monkeypatch) -> dict[str, list[str]]:
    """Names the test's DNS answers (as a resolver inside a private network would); every
    other name goes to the system resolver."""
    names: dict[str, list[str]] = {}
    real = socket.getaddrinfo

    def getaddrinfo(host, port, *args, **kwargs):
        if host in names:
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port)) for a in names[host]]
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return names


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    rec = Receiver()
    yield rec
    rec.close()


def new_org(url: str, name: str = "acme") -> str:
    """An organization with a training file (see :func:`add_training_file`)."""
    with session_scope(url) as session:
        org_id = auth.create_organization(session, name).id
    add_training_file(url, org_id)
    return org_id


def add_training_file(url: str, org_id: str) -> None:
    """A processed file ``file-<org id>`` for :func:`running_job` to train on."""
    with session_scope(url) as session:
        session.add(
            File(
                id=f"file-{org_id}",
                organization_id=org_id,
                filename="t.jsonl",
                purpose="fine-tune",
                bytes=1,
                status="processed",
                storage_key="k",
                example_count=20,
                created_at=utcnow(),
            )
        )


def running_job(url: str, org_id: str) -> tuple[str, int]:
    """A job of ``org_id`` claimed by a worker: (job id, attempt)."""
    with session_scope(url) as session:
        job = jobs.create_job(
            session,
            org_id,
            jobs.NewJob(
                model="tiny-random-llama",
                training_file=f"file-{org_id}",
                validation_file=None,
                hyperparameters=Hyperparameters(),
                adapter=AdapterConfig(),
                seed=1,
                suffix=None,
                metadata=None,
            ),
        )
        job_id = job.id
    with session_scope(url) as session:
        session.execute(update(Job).where(Job.id == job_id).values(status="queued"))
        attempt = jobs.claim_job(session, job_id, "w1", 60)
    assert attempt is not None
    return job_id, attempt


def add_endpoint(
    url: str, box: SecretBox, org_id: str, receiver_url: str, event_types: list[str]
) -> tuple[str, str]:
    """(endpoint id, signing secret)."""
    with session_scope(url) as session:
        new = endpoints.create_endpoint(
            session, box, org_id, url=receiver_url, event_types=event_types, allow_private=True
        )
        return new.row.id, new.secret
