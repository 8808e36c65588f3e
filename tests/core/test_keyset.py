"""Keyset pagination walks every row exactly once, in order, ties on created_at included."""

from __future__ import annotations

from datetime import timedelta

import pytest

from core.db.engine import session_scope
from core.db.models import File, Job
from core.errors import InvalidRequest
from core.jobs import lifecycle as jobs
from core.storage import files
from core.tenancy import auth
from core.timeutil import utcnow


def seed(url: str) -> str:
    """Eleven jobs and files over four instants: several rows share a created_at."""
    base = utcnow().replace(microsecond=0)
    with session_scope(url) as session:
        org = auth.create_organization(session, "acme")
        other = auth.create_organization(session, "other")
        for i in range(11):
            at = base - timedelta(seconds=i // 3)
            for owner in (org, other):
                session.add(
                    File(
                        id=f"file-{owner.name}-{i:02d}",
                        organization_id=owner.id,
                        filename="t.jsonl",
                        purpose="fine-tune",
                        bytes=1,
                        status="processed",
                        storage_key="k",
                        created_at=at,
                    )
                )
                session.add(
                    Job(
                        id=f"ftjob-{owner.name}-{i:02d}",
                        organization_id=owner.id,
                        model="m",
                        status="succeeded",
                        training_file=f"file-{owner.name}-{i:02d}",
                        hyperparameters={},
                        adapter={},
                        method={},
                        seed=i,
                        result_files=[],
                        created_at=at,
                    )
                )
        return org.id


def walk(fetch, limit: int) -> list[str]:
    seen, after = [], None
    while True:
        rows, has_more = fetch(after, limit)
        seen += [row.id for row in rows]
        if not has_more:
            return seen
        after = rows[-1].id


@pytest.mark.parametrize("limit", [1, 2, 4, 20])
def test_jobs_pages_cover_every_row_once_in_order(database_url, limit):
    org_id = seed(database_url)
    with session_scope(database_url) as session:
        expected = [
            j.id
            for j in sorted(
                session.query(Job).filter_by(organization_id=org_id),
                key=lambda j: (j.created_at, j.id),
                reverse=True,
            )
        ]
        got = walk(lambda after, n: jobs.list_jobs(session, org_id, limit=n, after=after), limit)
    assert got == expected and len(got) == 11


def test_jobs_cursor_must_be_a_job_of_the_caller(database_url):
    org_id = seed(database_url)
    with session_scope(database_url) as session:
        for after in ("ftjob-nope", "ftjob-other-03"):
            with pytest.raises(InvalidRequest, match=f"No such fine-tuning job: {after}"):
                jobs.list_jobs(session, org_id, limit=5, after=after)
        with pytest.raises(InvalidRequest):
            jobs.list_jobs(session, org_id, limit=5, after="ftjob-other-03", metadata={"k": "v"})
        # The oldest job as the cursor: an empty last page, not an error.
        assert jobs.list_jobs(session, org_id, limit=5, after="ftjob-acme-09") == ([], False)


@pytest.mark.parametrize("order", ["desc", "asc"])
def test_files_pages_cover_every_row_once_in_order(database_url, order):
    org_id = seed(database_url)
    with session_scope(database_url) as session:
        expected = [
            f.id
            for f in sorted(
                session.query(File).filter_by(organization_id=org_id),
                key=lambda f: (f.created_at, f.id),
                reverse=order == "desc",
            )
        ]
        got = walk(
            lambda after, n: files.list_files(
                session, org_id, purpose=None, limit=n, after=after, order=order
            ),
            3,
        )
    assert got == expected and len(got) == 11
