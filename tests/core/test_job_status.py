"""JobStatus and FailureCode: the enums travel as the plain strings of the wire format, and
every failure code a worker produces is one of them."""

from __future__ import annotations

import json

import pytest
from botocore.exceptions import EndpointConnectionError
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from core.db.engine import session_scope
from core.db.models import Job
from core.errors import InvalidRequest
from core.jobs import lifecycle as jobs
from core.jobs.status import ALL_STATUSES, FAILURE_HELP, FailureCode, JobStatus
from core.storage.objects import ObjectNotFound
from tests.core.jobs_support import make_job
from worker.failures import TRANSIENT_CODES, classify
from worker.model_store import ModelUnavailable
from worker.training.spec import TrainingProcessLost


def test_wire_values_are_the_plain_strings():
    body = {"status": JobStatus.QUEUED, "error": {"code": FailureCode.WORKER_LOST}}
    assert json.dumps(body) == '{"status": "queued", "error": {"code": "worker_lost"}}'
    assert f"{JobStatus.PAUSED} %s" % FailureCode.OUT_OF_MEMORY == "paused out_of_memory"


def test_status_and_failure_code_are_stored_as_plain_strings(database_url):
    job_id = make_job(database_url)  # create_job sets JobStatus.VALIDATING_FILES
    with session_scope(database_url) as session:
        assert session.execute(text("SELECT status FROM jobs")).scalar_one() == "validating_files"
        assert jobs.fail_validation(session, job_id, "bad line 3")  # binds enum members
    with session_scope(database_url) as session:
        status, error = session.execute(text("SELECT status, error FROM jobs")).one()
        assert (type(status), status) == (str, "failed")
        raw_error = error if isinstance(error, str) else json.dumps(error)
        assert '"code": "invalid_training_file"' in raw_error
        job = session.get(Job, job_id)
        assert job.error["code"] == FailureCode.INVALID_TRAINING_FILE


def test_unknown_status_lists_the_plain_values(database_url):
    job_id = make_job(database_url)
    with session_scope(database_url) as session:
        org_id = session.get(Job, job_id).organization_id
        with pytest.raises(InvalidRequest) as caught:
            jobs.list_jobs(session, org_id, limit=10, after=None, status="done")
        listed, _ = jobs.list_jobs(session, org_id, limit=10, after=None, status="validating_files")
    assert str(caught.value.message) == (
        "Unknown status 'done'. One of: validating_files, queued, running, paused, "
        "succeeded, failed, cancelled"
    )
    assert [job.id for job in listed] == [job_id]


def test_status_groups_are_made_of_members():
    assert ALL_STATUSES == tuple(JobStatus)
    assert [str(s) for s in ALL_STATUSES] == [
        "validating_files",
        "queued",
        "running",
        "paused",
        "succeeded",
        "failed",
        "cancelled",
    ]


FAILURES = [
    (TrainingProcessLost("rank 1 exited"), FailureCode.TRAINING_PROCESS_LOST),
    (ObjectNotFound("jobs/x/train.jsonl"), FailureCode.FILE_MISSING),
    (EndpointConnectionError(endpoint_url="http://s3"), FailureCode.STORAGE_UNAVAILABLE),
    (OperationalError("SELECT 1", {}, Exception("gone")), FailureCode.DATABASE_UNAVAILABLE),
    (ModelUnavailable("no such model"), FailureCode.MODEL_UNAVAILABLE),
    (MemoryError(), FailureCode.OUT_OF_MEMORY),
    (FloatingPointError("loss is nan"), FailureCode.TRAINING_DIVERGED),
    (ValueError("Target modules {'q'} not found"), FailureCode.INVALID_ADAPTER),
    (ValueError("no assistant turn"), FailureCode.INVALID_TRAINING_DATA),
    (RuntimeError("boom"), FailureCode.INTERNAL_ERROR),
]


@pytest.mark.parametrize(("exc", "expected"), FAILURES, ids=[str(c) for _, c in FAILURES])
def test_every_classified_failure_is_a_failure_code(exc, expected):
    code, message, _param = classify(exc)
    assert type(code) is FailureCode and code is expected
    assert message and code in FAILURE_HELP


def test_every_failure_code_has_help_and_transient_codes_are_members():
    assert set(FAILURE_HELP) == set(FailureCode)
    assert all(type(code) is FailureCode for code in TRANSIENT_CODES)
