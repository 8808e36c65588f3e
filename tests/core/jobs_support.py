"""A job in the database for the core tests, created through the real services."""

from __future__ import annotations

from core.catalog import lookup as catalog
from core.db.engine import session_scope
from core.db.models import File
from core.jobs import lifecycle as jobs
from core.jobs.hyperparams import AdapterConfig, Hyperparameters
from core.tenancy import auth
from core.timeutil import utcnow


def make_job(url: str, *, validated: bool = False) -> str:
    """A new job of a new organization: ``validating_files``, or ``queued`` if ``validated``."""
    with session_scope(url) as session:
        catalog.register_builtin_models(session)
        org = auth.create_organization(session, "acme")
        session.add(
            File(
                id="file-1",
                organization_id=org.id,
                filename="t.jsonl",
                purpose="fine-tune",
                bytes=1,
                status="processed",
                storage_key="k",
                example_count=20,
                created_at=utcnow(),
            )
        )
        session.flush()
        job = jobs.create_job(
            session,
            org.id,
            jobs.NewJob(
                model="tiny-random-llama",
                training_file="file-1",
                validation_file=None,
                hyperparameters=Hyperparameters(),
                adapter=AdapterConfig(),
                seed=1,
                suffix=None,
                metadata=None,
            ),
        )
        job_id = job.id
    if validated:
        with session_scope(url) as session:
            assert jobs.finish_validation(session, job_id, {"examples": 20})
    return job_id
