"""Validation under duplicate messages, dying validators, slow files and crowded queues: a job
is validated by one validator at a time (a lease), is not sent again while leased, is taken over
when its validator dies (bounded), stops at the time budget, and organizations are validated in
turn. Real PostgreSQL, the real API and the validator's own code with the tiny model."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from datetime import timedelta
from itertools import count

import pytest
from flask.testing import FlaskClient
from sqlalchemy import select, update

from core.db.engine import session_scope
from core.db.models import Job, JobEvent
from core.scheduling.sweeper import sweep
from core.scheduling.validation import claim_next_validation
from core.settings import Settings, load_settings
from core.tenancy import auth
from core.timeutil import utcnow
from tests.conftest import MODEL_CACHE

KEY = "dor-faults-validation-key-00000000"


def chat_rows(n: int) -> list[dict]:
    return [
        {"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "a"}]}
        for i in range(n)
    ]


@dataclass
class Platform:
    settings: Settings
    client: FlaskClient
    headers: dict[str, str]

    def org_headers(self, name: str) -> dict[str, str]:
        """A new organization's admin key."""
        with session_scope(self.settings.database_url) as session:
            org = auth.create_organization(session, name)
            secret = auth.create_key(session, org.id, name="admin", scope="admin").secret
        return {"Authorization": f"Bearer {secret}"}

    def create_jobs(self, headers: dict[str, str], n: int) -> list[str]:
        rows = [
            {
                "messages": [
                    {"role": "user", "content": f"q{i}"},
                    {"role": "assistant", "content": "a"},
                ]
            }
            for i in range(12)
        ]
        body = "".join(json.dumps(r) + "\n" for r in rows).encode()
        resp = self.client.post(
            "/v1/files",
            headers=headers,
            content_type="multipart/form-data",
            data={"file": (io.BytesIO(body), "t.jsonl"), "purpose": "fine-tune"},
        )
        assert resp.status_code == 200, resp.get_json()
        file_id = resp.get_json()["id"]
        ids = []
        for _ in range(n):
            resp = self.client.post(
                "/v1/fine_tuning/jobs",
                json={"model": "tiny-random-llama", "training_file": file_id},
                headers=headers,
            )
            assert resp.status_code == 200, resp.get_json()
            ids.append(resp.get_json()["id"])
        return ids

    def job(self, job_id: str) -> Job:
        with session_scope(self.settings.database_url) as session:
            job = session.get(Job, job_id)
            session.expunge(job)
            return job

    def expire_lease(self, job_id: str) -> None:
        with session_scope(self.settings.database_url) as session:
            session.execute(
                update(Job)
                .where(Job.id == job_id)
                .values(lease_expires_at=utcnow() - timedelta(seconds=1))
            )

    def claim(self, validator: str, max_retries: int = 3) -> str | None:
        with session_scope(self.settings.database_url) as session:
            return claim_next_validation(
                session, validator=validator, lease_seconds=60, max_retries=max_retries
            )


@pytest.fixture
def platform(monkeypatch, tmp_path, postgres_url) -> Platform:
    from api import create_app
    from core.bootstrap import prepare_database

    monkeypatch.setenv("DORADO_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DORADO_DATABASE_URL", postgres_url)
    monkeypatch.setenv("DORADO_BOOTSTRAP_API_KEY", KEY)
    monkeypatch.setenv("DORADO_MODEL_CACHE", str(MODEL_CACHE))
    for name in ("DORADO_BROKER_URL", "DORADO_RATE_LIMIT_PER_MINUTE"):
        monkeypatch.delenv(name, raising=False)
    settings = load_settings()
    prepare_database(settings)
    client = create_app(settings).test_client()
    return Platform(settings, client, {"Authorization": f"Bearer {KEY}"})


def test_a_leased_job_is_not_sent_again_nor_taken_by_a_second_validator(platform):
    (job_id,) = platform.create_jobs(platform.headers, 1)
    eager = platform.settings.model_copy(update={"republish_after_seconds": 0})
    assert platform.claim("validator-1") == job_id
    # The sweeper used to send it again every DORADO_REPUBLISH_AFTER_SECONDS, and the second
    # validator thread then tokenized it too.
    assert job_id not in sweep(eager)["published"]
    assert platform.claim("validator-2") is None
    job = platform.job(job_id)
    assert job.worker == "validator-1" and job.lease_expires_at > utcnow()

    # Its validator died: once the lease expires the job is sent again and taken over.
    platform.expire_lease(job_id)
    assert job_id in sweep(eager)["published"]
    assert platform.claim("validator-2") == job_id
    job = platform.job(job_id)
    assert job.worker == "validator-2" and job.retries == 1

    from worker.validation import validate_claimed

    validate_claimed(platform.settings, job_id, "validator-2")
    job = platform.job(job_id)
    assert job.status == "queued" and job.validation["examples"] == 12
    assert job.worker is None and job.lease_expires_at is None


def test_a_job_that_keeps_killing_its_validators_fails(platform):
    (job_id,) = platform.create_jobs(platform.headers, 1)
    assert platform.claim("v1", max_retries=1) == job_id
    platform.expire_lease(job_id)
    assert platform.claim("v2", max_retries=1) == job_id
    platform.expire_lease(job_id)
    assert platform.claim("v3", max_retries=1) is None
    job = platform.job(job_id)
    assert job.status == "failed" and job.error["code"] == "worker_lost"
    assert "stopped responding 2 times" in job.error["message"]


def test_validation_stops_at_its_time_budget(platform, monkeypatch):
    import worker.validation as validation

    (job_id,) = platform.create_jobs(platform.headers, 1)
    ticks = count(step=10.0)  # every look at the clock: 10 s later
    monkeypatch.setattr(validation.time, "monotonic", lambda: next(ticks))
    settings = platform.settings.model_copy(update={"validation_timeout_seconds": 25})
    validation.validate(settings, job_id)
    job = platform.job(job_id)
    assert job.status == "failed" and job.error["code"] == "validation_timeout"
    assert "longer than 25 s (DORADO_VALIDATION_TIMEOUT_SECONDS)" in job.error["message"]
    assert job.worker is None and job.lease_expires_at is None


def test_organizations_are_validated_in_turn(platform):
    """40 jobs of one organization, then one of another: the other's is validated second, not
    41st (a validator takes the organization served least recently, whatever message woke it)."""
    from worker.validation import validate

    crowd = platform.create_jobs(platform.headers, 40)
    (lone,) = platform.create_jobs(platform.org_headers("lone"), 1)
    messages = [*crowd, lone]  # the broker delivers in this order
    validate(platform.settings, messages[0])
    validate(platform.settings, messages[1])
    assert platform.job(crowd[0]).status == "queued"
    assert platform.job(lone).status == "queued"
    with session_scope(platform.settings.database_url) as session:
        waiting = session.scalars(select(Job.id).where(Job.status == "validating_files")).all()
    assert set(waiting) == set(crowd[1:])


def test_a_template_that_cannot_render_a_line_fails_the_job_naming_it(platform):
    """A tool call without content passes the upload checks, but the tiny model's template
    cannot render it: a user error naming the line, not an internal error."""
    rows = chat_rows(12)
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    rows[4]["messages"].insert(1, {"role": "assistant", "content": None, "tool_calls": [call]})
    rows[4]["messages"].insert(2, {"role": "tool", "tool_call_id": "c1", "content": "42"})
    body = "".join(json.dumps(r) + "\n" for r in rows).encode()
    resp = platform.client.post(
        "/v1/files",
        headers=platform.headers,
        content_type="multipart/form-data",
        data={"file": (io.BytesIO(body), "t.jsonl"), "purpose": "fine-tune"},
    )
    assert resp.status_code == 200, resp.get_json()
    resp = platform.client.post(
        "/v1/fine_tuning/jobs",
        json={"model": "tiny-random-llama", "training_file": resp.get_json()["id"]},
        headers=platform.headers,
    )
    job_id = resp.get_json()["id"]
    from worker.validation import validate

    validate(platform.settings, job_id)
    job = platform.job(job_id)
    assert job.status == "failed", job.error
    assert job.error["code"] == "invalid_training_file"
    assert "line 5: the model's chat template cannot render this example" in job.error["message"]
    with session_scope(platform.settings.database_url) as session:
        events = session.scalars(select(JobEvent.message).where(JobEvent.job_id == job_id)).all()
    assert any("line 5" in message for message in events)


def test_a_validator_that_stops_unexpectedly_gives_its_lease_back(platform, monkeypatch):
    """An error outside the validation's own handling (here: before it reads the job) must not
    leave the job leased for the whole time budget: it goes back to the queue of validations,
    counted as a retry."""
    from worker import validation

    (job_id,) = platform.create_jobs(platform.headers, 1)

    def broken(*_args, **_kwargs):
        raise RuntimeError("the validator broke before reading the job")

    monkeypatch.setattr(validation, "validate_claimed", broken)
    with pytest.raises(RuntimeError):
        validation.validate(platform.settings, job_id)
    job = platform.job(job_id)
    assert job.status == "validating_files"
    assert job.worker is None and job.lease_expires_at is None and job.published_at is None
    assert job.retries == 1
    monkeypatch.undo()
    assert platform.claim("another-validator") == job_id
