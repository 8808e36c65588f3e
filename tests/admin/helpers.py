"""Building blocks for scheduling tests: organizations and queued jobs made through the core
services, on a real database."""

from __future__ import annotations

from sqlalchemy.orm import Session

from core import ids
from core.catalog import lookup as catalog
from core.db.models import File
from core.jobs import lifecycle as jobs
from core.jobs.hyperparams import AdapterConfig, Hyperparameters
from core.tenancy import auth
from core.timeutil import utcnow


def make_org(
    session: Session,
    name: str,
    *,
    max_running_jobs: int | None = None,
    max_queued_jobs: int | None = None,
) -> str:
    catalog.register_builtin_models(session)
    org = auth.create_organization(session, name)
    org.max_running_jobs, org.max_queued_jobs = max_running_jobs, max_queued_jobs
    session.add(
        File(
            id=ids.file_id(),
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
    return org.id


def make_job(
    session: Session, org_id: str, *, queued: bool = True, options: dict | None = None
) -> str:
    """A job of ``org_id`` (tiny model), moved to ``queued`` unless told otherwise."""
    training = session.query(File).filter_by(organization_id=org_id).first()
    job = jobs.create_job(
        session,
        org_id,
        jobs.NewJob(
            model="tiny-random-llama",
            training_file=training.id,
            validation_file=None,
            hyperparameters=Hyperparameters(),
            adapter=AdapterConfig(),
            seed=1,
            suffix=None,
            metadata=None,
            options=options or {},
        ),
    )
    if queued:
        assert jobs.finish_validation(session, job.id, {"examples": 20})
    return job.id


def dorado_admin(env: dict[str, str], *args: str, ok: bool = True):
    """Run ``dorado-admin ARGS`` as a real subprocess; with ``ok`` it must exit 0."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    binary = Path(sys.executable).parent / "dorado-admin"
    done = subprocess.run(
        [str(binary), *args], env={**os.environ, **env}, capture_output=True, text=True, timeout=60
    )
    if ok:
        assert done.returncode == 0, (args, done.stdout, done.stderr)
    return done


def dorado_admin_json(env: dict[str, str], *args: str):
    import json

    return json.loads(dorado_admin(env, *args, "--json").stdout)
