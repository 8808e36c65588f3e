"""Every files / fine_tuning.jobs / checkpoints / models call of the official openai SDK,
against a real running API and worker, checking every field the SDK types declare."""

from __future__ import annotations

import io
import time

import openai
import pytest
from openai import OpenAI
from pydantic import BaseModel

from tests.conftest import EXAMPLES
from tests.e2e.flow import client_for, wait_for_job
from tests.e2e.platform import Platform

PIRATE = (EXAMPLES / "pirate.jsonl").read_bytes()


# Fields OpenAI's published spec types as non-null (string, object, number) although they are
# optional: Dorado omits them rather than sending null, so strict clients accept the response.
OMITTED_WHEN_EMPTY = {
    "status_details",
    "expires_at",
    "supervised",
    "dpo",
    "reinforcement",
    "data",
    "valid_loss",
    "valid_mean_token_accuracy",
    "full_valid_loss",
    "full_valid_mean_token_accuracy",
}


def assert_complete(obj: BaseModel) -> None:
    """Every field the SDK declares is present in the response (or, for those in
    :data:`OMITTED_WHEN_EMPTY`, omitted rather than null) and has the declared type."""
    declared = set(type(obj).model_fields)
    missing = declared - obj.model_fields_set - OMITTED_WHEN_EMPTY
    assert not missing, f"{type(obj).__name__} lacks {sorted(missing)}"
    type(obj).model_validate(obj.model_dump(mode="json"))  # strict type check
    for name in declared:
        value = getattr(obj, name)
        if isinstance(value, BaseModel):
            assert_complete(value)


def upload(client: OpenAI, data: bytes = PIRATE, name: str = "train.jsonl"):
    return client.files.create(file=(name, io.BytesIO(data)), purpose="fine-tune")


@pytest.fixture(scope="module")
def client(platform: Platform) -> OpenAI:
    return client_for(platform)


def test_files(client: OpenAI):
    created = [upload(client, name=f"f{i}.jsonl") for i in range(3)]
    for f in created:
        assert_complete(f)
        assert f.id.startswith("file-") and len(f.id) == 29
        assert f.object == "file" and f.purpose == "fine-tune" and f.status == "processed"
        assert f.bytes == len(PIRATE) and f.filename.startswith("f")
        assert f.model_extra["example_count"] == 52
    assert client.files.wait_for_processing(created[0].id).status == "processed"

    first = client.files.list(limit=2, order="desc")
    assert_complete(first)
    assert len(first.data) == 2 and first.has_more is True
    listed = [f.id for f in client.files.list(limit=2, order="desc")]  # auto-pagination
    assert listed[:3] == [f.id for f in reversed(created)]
    ascending = [f.id for f in client.files.list(limit=1, order="asc")]
    assert ascending == list(reversed(listed))
    assert [f.id for f in client.files.list(purpose="fine-tune-results")] == []

    retrieved = client.files.retrieve(created[0].id)
    assert_complete(retrieved)
    assert retrieved.id == created[0].id
    assert client.files.content(created[0].id).content == PIRATE

    deleted = client.files.delete(created[2].id)
    assert_complete(deleted)
    assert deleted.deleted is True and deleted.id == created[2].id
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(created[2].id)


def test_job_lifecycle_checkpoints_and_models(client: OpenAI, platform: Platform):
    training = upload(client)
    validation = upload(client, b"".join(PIRATE.splitlines(keepends=True)[:12]), "v.jsonl")
    job = client.fine_tuning.jobs.create(
        model="tiny-random-llama",
        training_file=training.id,
        validation_file=validation.id,
        hyperparameters={"n_epochs": 2, "batch_size": 8},
        seed=42,
        suffix="sdk-test",
        metadata={"team": "sdk", "run": "1"},
        extra_body={"adapter": {"type": "lora", "r": 4}},
    )
    assert_complete(job)
    assert job.id.startswith("ftjob-") and len(job.id) == 30
    assert job.object == "fine_tuning.job" and job.status == "validating_files"
    assert job.fine_tuned_model is None and job.finished_at is None
    assert job.trained_tokens is None and job.estimated_finish is None
    assert job.hyperparameters.n_epochs == 2 and job.hyperparameters.batch_size == 8
    assert job.hyperparameters.learning_rate_multiplier == 1.0
    assert job.method.type == "supervised"
    assert job.method.supervised.hyperparameters.n_epochs == 2
    assert job.seed == 42 and job.metadata == {"team": "sdk", "run": "1"}

    done = wait_for_job(client, job.id, timeout=300, platform=platform)
    assert done.status == "succeeded", done.error
    assert_complete(done)
    assert done.fine_tuned_model == f"ft:tiny-random-llama:default:sdk-test:{job.id[-8:]}"
    assert isinstance(done.finished_at, int) and isinstance(done.trained_tokens, int)
    assert done.estimated_finish is None and done.error is None

    events = list(client.fine_tuning.jobs.list_events(job.id, limit=5))  # pages of 5
    for event in events:
        assert_complete(event)
        assert event.id.startswith("ftevent-") and event.object == "fine_tuning.job.event"
    messages = [e.message for e in reversed(events)]
    assert messages[:5] == [
        f"Created fine-tuning job: {job.id}",
        f"Validating training file: {training.id}",
        f"Validating validation file: {validation.id}",
        "Files validated, moving job to queued state",
        "Fine-tuning job started",
    ]
    validated = next(e for e in events if e.message.startswith("Files validated"))
    assert validated.data["examples"] == 52 and validated.data["validation_file"]["examples"] == 12
    assert done.model_extra["validation"]["tokens"] * 2 == done.trained_tokens  # exact count
    assert messages[-2:] == [
        f"New fine-tuned model created: {done.fine_tuned_model}",
        "The job has successfully completed",
    ]
    metrics = [e for e in reversed(events) if e.type == "metrics"]
    assert {
        "step",
        "total_steps",
        "train_loss",
        "train_mean_token_accuracy",
        "valid_loss",
        "valid_mean_token_accuracy",
        "full_valid_loss",
        "full_valid_mean_token_accuracy",
    } <= set(metrics[-1].data)
    assert metrics[-1].data["full_valid_loss"] is not None  # last step ends an epoch
    assert any("Checkpoint saved" in m for m in messages)

    checkpoints = list(client.fine_tuning.jobs.checkpoints.list(job.id, limit=1))
    assert len(checkpoints) == 2  # one per epoch
    for ckpt in checkpoints:
        assert_complete(ckpt)
        assert ckpt.id.startswith("ftckpt_") and ckpt.fine_tuning_job_id == job.id
        assert (
            ckpt.fine_tuned_model_checkpoint
            == f"{done.fine_tuned_model}:ckpt-step-{ckpt.step_number}"
        )
        assert ckpt.metrics.train_loss is not None and ckpt.metrics.full_valid_loss is not None
    assert checkpoints[0].step_number > checkpoints[1].step_number  # newest first
    assert checkpoints[0].step_number == metrics[-1].data["total_steps"]

    (results_id,) = done.result_files
    csv_text = client.files.content(results_id).text
    assert (
        csv_text.splitlines()[0]
        == "step,train_loss,train_accuracy,valid_loss,valid_mean_token_accuracy"
    )
    assert client.files.retrieve(results_id).purpose == "fine-tune-results"

    first_page = client.fine_tuning.jobs.list(limit=1)
    assert_complete(first_page)
    assert first_page.data[0].id == job.id
    assert [j.id for j in client.fine_tuning.jobs.list(metadata={"team": "sdk"})] == [job.id]
    assert list(client.fine_tuning.jobs.list(metadata={"team": "other"})) == []
    assert_complete(client.fine_tuning.jobs.retrieve(job.id))

    models = client.models.list()
    assert_complete(models)
    for model in models.data:
        assert_complete(model)
    assert done.fine_tuned_model in {m.id for m in models.data}
    ft = client.models.retrieve(done.fine_tuned_model)
    assert ft.id == done.fine_tuned_model and ft.object == "model"
    assert client.models.retrieve("tiny-random-llama").owned_by == "dorado"
    deleted = client.models.delete(done.fine_tuned_model)
    assert_complete(deleted)
    assert deleted.deleted is True
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve(done.fine_tuned_model)


def test_job_list_pagination(client: OpenAI):
    training = upload(client)
    created = [
        client.fine_tuning.jobs.create(
            model="tiny-random-llama", training_file=training.id, metadata={"batch": "pagination"}
        )
        for _ in range(3)
    ]
    for job in created:  # keep the worker free for the other tests
        client.fine_tuning.jobs.cancel(job.id)
    page = client.fine_tuning.jobs.list(limit=2, metadata={"batch": "pagination"})
    assert len(page.data) == 2 and page.has_more
    ids = [j.id for j in client.fine_tuning.jobs.list(limit=2, metadata={"batch": "pagination"})]
    assert ids == [j.id for j in reversed(created)]


def wait_for_status(client: OpenAI, job_id: str, wanted: str, timeout: float = 120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.fine_tuning.jobs.retrieve(job_id)
        if job.status == wanted:
            return job
        time.sleep(0.2)
    raise TimeoutError(f"{job_id} is {job.status}, not {wanted}")


def wait_for_event(client: OpenAI, job_id: str, prefix: str, timeout: float = 120) -> str:
    """The first event message of the job that starts with ``prefix``. A job is ``running`` as
    soon as a worker claims it, before that worker has loaded the model and the checkpoint."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        events = client.fine_tuning.jobs.list_events(job_id, limit=100)
        found = [e.message for e in events if e.message.startswith(prefix)]
        if found:
            return found[0]
        time.sleep(0.2)
    raise TimeoutError(f"{job_id} has no event starting {prefix!r}")


def test_pause_resume_then_cancel_a_running_job(client: OpenAI, platform: Platform):
    training = upload(client)
    job = client.fine_tuning.jobs.create(
        model="tiny-random-llama",
        training_file=training.id,
        hyperparameters={"n_epochs": 50, "batch_size": 1},
    )
    running = wait_for_status(client, job.id, "running")
    assert_complete(running)
    time.sleep(1.0)
    client.fine_tuning.jobs.pause(job.id)
    paused = wait_for_status(client, job.id, "paused")
    assert paused.estimated_finish is None
    (ckpt, *_) = list(client.fine_tuning.jobs.checkpoints.list(job.id))
    assert ckpt.model_extra["reason"] == "pause"

    resumed = client.fine_tuning.jobs.resume(job.id)
    assert resumed.status == "queued"
    wait_for_status(client, job.id, "running")
    wait_for_event(client, job.id, "Resumed from step")
    cancelled = client.fine_tuning.jobs.cancel(job.id)
    assert cancelled.status == "cancelled"
    time.sleep(2.0)
    final = client.fine_tuning.jobs.retrieve(job.id)
    assert final.status == "cancelled" and final.fine_tuned_model is None
    messages = [e.message for e in client.fine_tuning.jobs.list_events(job.id, limit=100)]
    assert any(m.startswith("Fine-tuning job paused at step") for m in messages)
    assert any(m.startswith("Resumed from step") for m in messages)
    with pytest.raises(openai.BadRequestError) as err:
        client.fine_tuning.jobs.cancel(job.id)
    assert "already cancelled" in err.value.message


def test_paused_job_resumes_to_success_without_repeating_steps(client: OpenAI, platform: Platform):
    training = upload(client)
    job = client.fine_tuning.jobs.create(
        model="tiny-random-llama",
        training_file=training.id,
        hyperparameters={"n_epochs": 6, "batch_size": 1},
        extra_body={"adapter": {"type": "lora"}},
    )
    wait_for_status(client, job.id, "running")
    time.sleep(1.0)
    client.fine_tuning.jobs.pause(job.id)
    wait_for_status(client, job.id, "paused")
    client.fine_tuning.jobs.resume(job.id)
    done = wait_for_job(client, job.id, timeout=300, platform=platform)
    assert done.status == "succeeded", done.error
    rows = client.files.content(done.result_files[0]).text.splitlines()[1:]
    steps = [int(r.split(",")[0]) for r in rows]
    assert steps == list(range(1, 6 * 52 + 1))  # every step once, none twice


def test_errors_map_to_sdk_exceptions(client: OpenAI, platform: Platform):
    bad = OpenAI(base_url=platform.base_url, api_key="dor-not-a-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as err:
        bad.models.list()
    assert err.value.request_id and err.value.body["code"] == "invalid_api_key"

    with pytest.raises(openai.NotFoundError):
        client.fine_tuning.jobs.retrieve("ftjob-doesnotexist")
    with pytest.raises(openai.NotFoundError):
        client.fine_tuning.jobs.list_events("ftjob-doesnotexist")
    with pytest.raises(openai.NotFoundError):
        client.fine_tuning.jobs.checkpoints.list("ftjob-doesnotexist")
    with pytest.raises(openai.BadRequestError) as err:  # as OpenAI answers
        client.fine_tuning.jobs.create(model="gpt-17", training_file="file-x")
    assert err.value.param == "model" and err.value.code == "model_not_available"
    with pytest.raises(openai.PermissionDeniedError):
        client.models.delete("tiny-random-llama")

    lines = PIRATE.splitlines(keepends=True)
    broken = b"".join(lines[:3] + [b'{"messages": [}\n'] + lines[3:])
    with pytest.raises(openai.BadRequestError) as err:
        upload(client, broken)
    assert "line 4" in err.value.message and err.value.param == "file"
    with pytest.raises(openai.BadRequestError) as err:
        upload(client, b"".join(lines[:5]))
    assert "at least 10" in err.value.message

    training = upload(client)
    with pytest.raises(openai.BadRequestError) as err:
        client.fine_tuning.jobs.create(
            model="tiny-random-llama", training_file=training.id, hyperparameters={"n_epochs": 0}
        )
    assert err.value.param == "hyperparameters.n_epochs"
    with pytest.raises(openai.BadRequestError) as err:
        client.fine_tuning.jobs.create(
            model="tiny-random-llama", training_file=training.id, method={"type": "dpo"}
        )
    assert "needs preference examples" in err.value.message and "line 1" in err.value.message
    with pytest.raises(openai.BadRequestError):
        client.fine_tuning.jobs.resume(
            client.fine_tuning.jobs.cancel(
                client.fine_tuning.jobs.create(
                    model="tiny-random-llama", training_file=training.id
                ).id
            ).id
        )


def test_failed_job_names_the_problem(client: OpenAI, platform: Platform):
    training = upload(client)
    job = client.fine_tuning.jobs.create(
        model="tiny-random-llama",
        training_file=training.id,
        extra_body={"adapter": {"target_modules": ["nope"]}},
    )
    failed = wait_for_job(client, job.id, timeout=120, platform=platform)
    assert failed.status == "failed"
    assert_complete(failed)
    assert failed.error.code and failed.error.message
    assert "nope" in failed.error.message


def test_job_past_its_time_limit_fails_clearly(client: OpenAI, platform: Platform):
    training = upload(client)
    job = client.fine_tuning.jobs.create(
        model="tiny-random-llama",
        training_file=training.id,
        hyperparameters={"n_epochs": 50, "batch_size": 1},
        extra_body={"max_run_seconds": 6},
    )
    failed = wait_for_job(client, job.id, timeout=120, platform=platform)
    assert failed.status == "failed"
    assert failed.error.code == "max_run_time_exceeded"
    assert failed.error.param == "max_run_seconds"
