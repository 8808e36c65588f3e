"""Statements per request on the hot paths of the load benchmark (bench/api_load.py): every
extra query is CPU on the API and the database, so a change that adds one shows up here."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import event

from core.db.engine import get_engine
from tests.api.conftest import Api, chat_examples


@contextmanager
def statements(api: Api) -> Iterator[list[str]]:
    engine = get_engine(api.client.application.extensions["dorado"].settings.database_url)
    seen: list[str] = []

    def record(_conn, _cursor, statement, _params, _context, _many) -> None:
        seen.append(statement.split()[0].upper())

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", record)


def test_poll_list_and_create_round_trips(api: Api):
    file_id = api.upload(chat_examples()).get_json()["id"]
    body = {"model": "tiny-random-llama", "training_file": file_id}
    ids = [api.post("/v1/fine_tuning/jobs", body).get_json()["id"] for _ in range(3)]
    # Past the key's last_used_at refresh (once a minute), which is not per request.
    api.get("/v1/models")

    with statements(api) as seen:
        assert api.get(f"/v1/fine_tuning/jobs/{ids[0]}").status_code == 200
    assert seen == ["SELECT", "SELECT"]  # the key; the job with its progress

    with statements(api) as seen:
        page = api.get(f"/v1/fine_tuning/jobs?limit=1&after={ids[2]}").get_json()
    assert [j["id"] for j in page["data"]] == [ids[1]] and page["has_more"]
    assert seen == ["SELECT", "SELECT"]  # the key; the page, its cursor and progress

    with statements(api) as seen:
        assert api.post("/v1/fine_tuning/jobs", body).status_code == 200
    # Key, organization (read once for the storage and the queued-jobs quotas), model, the
    # organization row again under lock (organizations have a max_queued_jobs cap by
    # default: two creations must not both take the last slot), pools, the pools' GPU counts
    # (the planner's FSDP choice), file; then the job, its
    # events and the audit entry in one transaction; the publish mark last: no audit
    # transaction or progress query after it.
    assert seen.count("SELECT") == 7
    assert seen[-1] == "UPDATE" and "INSERT" not in seen[seen.index("UPDATE") :]
