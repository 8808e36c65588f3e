"""The audit log: who created, cancelled, downloaded or deleted what, when, with which key;
readable by operators through the API (filters, pages) and nobody else."""

from __future__ import annotations

import time

from tests.security.conftest import chat_lines, upload
from tests.security.helpers import make_app


def events(api, **params) -> list[dict]:
    query = "&".join(f"{k}={v}" for k, v in params.items())
    resp = api.client.get(f"/v1/admin/audit?{query}", headers=api.headers)
    assert resp.status_code == 200, resp.get_json()
    return resp.get_json()["data"]


def test_api_actions_are_audited(monkeypatch, tmp_path):
    api = make_app(monkeypatch, tmp_path / "home")
    before = int(time.time()) - 1
    file_id = upload(api.client, api.headers, chat_lines(10, "audit")).get_json()["id"]
    job = api.client.post(
        "/v1/fine_tuning/jobs",
        headers=api.headers,
        json={"model": "tiny-random-llama", "training_file": file_id},
    ).get_json()
    assert (
        api.client.post(f"/v1/fine_tuning/jobs/{job['id']}/cancel", headers=api.headers).status_code
        == 200
    )
    content = api.client.get(f"/v1/files/{file_id}/content", headers=api.headers)
    assert content.status_code == 200 and content.get_data()
    created = api.client.post(
        "/v1/organization/api_keys", headers=api.headers, json={"name": "ci", "scope": "read-only"}
    ).get_json()
    assert (
        api.client.delete(
            f"/v1/organization/api_keys/{created['id']}", headers=api.headers
        ).status_code
        == 200
    )
    assert api.client.delete(f"/v1/files/{file_id}", headers=api.headers).status_code == 200
    # Failed and read-only requests leave no entry.
    assert (
        api.client.post("/v1/fine_tuning/jobs/ftjob-nope/cancel", headers=api.headers).status_code
        == 404
    )
    assert api.client.get("/v1/files", headers=api.headers).status_code == 200

    log = events(api)
    actions = [(e["action"], e["object_id"]) for e in reversed(log)]
    assert actions == [
        ("file.create", file_id),
        ("job.create", job["id"]),
        ("job.cancel", job["id"]),
        ("file.download", file_id),
        ("api_key.create", created["id"]),
        ("api_key.revoke", created["id"]),
        ("file.delete", file_id),
    ]
    bootstrap = api.client.get("/v1/organization/api_keys", headers=api.headers).get_json()["data"][
        0
    ]
    for event in log:
        assert event["actor"] == f"key:{bootstrap['prefix']}"
        assert event["api_key_id"] == bootstrap["id"]
        assert event["organization_id"] == job["organization_id"]
        assert event["ip"] == "127.0.0.1" and event["created_at"] >= before
    assert created["key"] not in str(log)  # no secret in the log
    assert log[2]["action"] == "api_key.create" and log[2]["details"]["scope"] == "read-only"

    # Filters and keyset pages.
    assert [e["action"] for e in events(api, action="job.cancel")] == ["job.cancel"]
    assert events(api, organization_id="org-other") == []
    assert len(events(api, since=before)) == 7 and events(api, since=before + 3600) == []
    page1 = api.client.get("/v1/admin/audit?limit=4", headers=api.headers).get_json()
    page2 = api.client.get(
        f"/v1/admin/audit?limit=4&after={page1['last_id']}", headers=api.headers
    ).get_json()
    assert page1["has_more"] and not page2["has_more"]
    assert [e["id"] for e in page1["data"] + page2["data"]] == [e["id"] for e in log]


def test_only_operator_admins_read_the_audit_log(monkeypatch, tmp_path):
    api = make_app(monkeypatch, tmp_path / "home")
    org = api.client.post(
        "/v1/admin/organizations", headers=api.headers, json={"name": "tenant"}
    ).get_json()
    key = api.client.post(
        f"/v1/admin/organizations/{org['id']}/api_keys",
        headers=api.headers,
        json={"scope": "admin"},
    ).get_json()["key"]
    resp = api.client.get("/v1/admin/audit", headers={"Authorization": f"Bearer {key}"})
    assert resp.status_code == 403
    actions = [e["action"] for e in events(api)]
    assert actions == ["api_key.create", "organization.create"]
