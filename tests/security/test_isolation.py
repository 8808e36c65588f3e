"""Tenancy: every route of the app, walked from ``app.url_map`` so that a new route cannot
escape, proves that one organization's keys cannot read, list, modify, download or learn of
the other's objects (a 404 exactly like a missing id's), and that scopes hold."""

from __future__ import annotations

import json
import random
import re
import string

import pytest
from werkzeug.routing import Rule

from tests.security.conftest import Tenant, World

SKIPPED_METHODS = {"HEAD", "OPTIONS"}
PUBLIC = {"/v1/openapi.json"}
ADMIN_PREFIX = "/v1/admin"
# Route parameter name -> the Tenant attribute holding objects of that kind.
PARAM_KINDS = {
    "file_id": "files",
    "job_id": "jobs",
    "model": "models",
    "key_id": "key_ids",
    "endpoint_id": "webhook_endpoints",
    "delivery_id": "webhook_deliveries",
}
# Query parameters that name an object, per endpoint: (parameter, kind).
QUERY_REFS = {
    "files.list_files": [("after", "files")],
    "jobs.list_jobs": [("after", "jobs")],
    "jobs.list_events": [("after", "events")],
    "jobs.list_checkpoints": [("after", "checkpoints")],
    "jobs.download_adapter": [("checkpoint", "checkpoints")],
    "webhooks.list_endpoints": [("after", "webhook_endpoints")],
    "webhooks.list_deliveries": [("after", "webhook_deliveries")],
}


def v1_rules(world: World) -> list[tuple[Rule, str]]:
    out = []
    for rule in world.app.url_map.iter_rules():
        if not rule.rule.startswith("/v1/") or rule.rule in PUBLIC:
            continue
        for method in sorted((rule.methods or set()) - SKIPPED_METHODS):
            out.append((rule, method))
    assert len(out) > 20, "the walk found too few routes: is the app complete?"
    return out


def placeholder_path(rule: Rule) -> str:
    """``rule``'s path with "x" for every argument: enough to reach its scope check."""
    path = rule.rule
    for p in rule.arguments:
        path = path.replace(f"<{p}>", "x").replace(f"<path:{p}>", "x")
    return path


def objects(tenant: Tenant, kind: str) -> list[str]:
    value = getattr(tenant, kind)
    return list(value.values()) if isinstance(value, dict) else list(value)


def fake_like(object_id: str) -> str:
    """An id of the same shape that exists nowhere."""
    match = re.search(r"[A-Za-z0-9]{8,}$", object_id)
    assert match, object_id
    tail = "".join(
        random.choice(string.ascii_letters + string.digits) for _ in range(len(match.group()))
    )
    return object_id[: match.start()] + tail


def normalized(resp, object_id: str) -> tuple[int, str]:
    text = resp.get_data(as_text=True).replace(object_id, "<ID>")
    text = re.sub(r"req_[0-9a-f]{24}", "<REQ>", text)  # 500s name their request id
    return resp.status_code, text


def call(world: World, method: str, path: str, headers: dict, **kwargs):
    return world.client.open(path, method=method, headers=headers, **kwargs)


def assert_like_missing(
    world: World, method: str, path_for, victim_id: str, headers: dict, **kwargs
) -> None:
    """The answer for the victim's object equals the answer for an id that does not exist."""
    fake = fake_like(victim_id)
    real = call(world, method, path_for(victim_id), headers, **kwargs)
    missing = call(world, method, path_for(fake), headers, **kwargs)
    assert real.status_code in (400, 404), (
        method,
        path_for(victim_id),
        real.status_code,
        real.get_data(as_text=True)[:300],
    )
    assert normalized(real, victim_id) == normalized(missing, fake), (method, path_for(fake))


def json_body_for(endpoint: str, victim: Tenant, own: Tenant) -> list[tuple[dict, str]]:
    """Bodies for parameterless POST routes that name the victim's objects: (body, id)."""
    job = {"model": "tiny-random-llama", "training_file": own.files[0]}
    if endpoint in ("jobs.create_job", "estimate.estimate"):
        return (
            [({**job, "training_file": f}, f) for f in victim.files]
            + [({**job, "validation_file": f}, f) for f in victim.files]
            + [({**job, "model": m}, m) for m in victim.models]
        )
    if endpoint == "inference.chat_completions":
        return [
            ({"model": m, "messages": [{"role": "user", "content": "hi"}]}, m)
            for m in victim.models
        ]
    return []


@pytest.mark.parametrize("attacker_name", ["a", "b"])
def test_no_route_reaches_another_organizations_objects(world: World, attacker_name: str):
    attacker = getattr(world, attacker_name)
    victim = world.b if attacker_name == "a" else world.a
    headers = attacker.headers("admin")
    victim_ids = victim.all_ids()
    checked = 0
    for rule, method in v1_rules(world):
        if rule.rule.startswith(ADMIN_PREFIX):
            continue  # operators only: see test_admin_routes_need_an_operator_admin_key
        params = sorted(rule.arguments)
        if params:
            unknown = [p for p in params if p not in PARAM_KINDS]
            assert not unknown, f"new route {rule.rule}: teach this test its {unknown}"
            assert len(params) == 1, rule.rule
            for victim_id in objects(victim, PARAM_KINDS[params[0]]):
                assert_like_missing(
                    world,
                    method,
                    lambda i, r=rule, p=params[0]: r.rule.replace(f"<{p}>", i).replace(
                        f"<path:{p}>", i
                    ),
                    victim_id,
                    headers,
                    **({"json": {}} if method == "POST" else {}),
                )
                checked += 1
        elif method == "GET":
            resp = call(world, method, rule.rule, headers)
            assert resp.status_code == 200, (rule.rule, resp.get_data(as_text=True)[:300])
            body = resp.get_data(as_text=True)
            leaked = [i for i in victim_ids if i in body]
            assert not leaked, f"{rule.rule} lists another organization's {leaked}"
            checked += 1
        else:
            bodies = json_body_for(rule.endpoint, victim, attacker)
            if rule.endpoint in (
                "files.create_file",
                "org_keys.create_key",
                "webhooks.create_endpoint",
                "org_integrations.update_integrations",
            ):
                continue  # names no existing object: creates in (or sets) the caller's org only
            assert bodies, f"new route {method} {rule.rule}: teach this test its body"
            for body, victim_id in bodies:
                fake = fake_like(victim_id)
                fake_body = json.loads(json.dumps(body).replace(victim_id, fake))
                real = call(world, method, rule.rule, headers, json=body)
                missing = call(world, method, rule.rule, headers, json=fake_body)
                assert real.status_code in (400, 404), (rule.rule, body, real.get_json())
                assert normalized(real, victim_id) == normalized(missing, fake), rule.rule
                checked += 1
        for name, kind in QUERY_REFS.get(rule.endpoint, []):
            base = rule.rule
            for p in params:  # the attacker's own object in the path, the victim's in the query
                own = objects(attacker, PARAM_KINDS[p])[0]
                base = base.replace(f"<{p}>", own).replace(f"<path:{p}>", own)
            for victim_id in objects(victim, kind):
                assert_like_missing(
                    world, method, lambda i, b=base, n=name: f"{b}?{n}={i}", victim_id, headers
                )
                checked += 1
    assert checked > 40
    # Nothing of the victim's was changed or deleted by any of it.
    own = victim.headers("admin")
    for file_id in victim.files:
        resp = world.client.get(f"/v1/files/{file_id}/content", headers=own)
        assert resp.status_code == 200 and resp.get_data()
    for job_id in victim.jobs:
        job = world.client.get(f"/v1/fine_tuning/jobs/{job_id}", headers=own).get_json()
        assert job["status"] in ("succeeded", "validating_files", "queued"), job
    models = world.client.get("/v1/models", headers=own).get_data(as_text=True)
    assert all(m in models for m in victim.models)
    keys = world.client.get("/v1/organization/api_keys", headers=own).get_json()["data"]
    assert all(k["revoked_at"] is None for k in keys if k["id"] in victim.key_ids.values())


def test_owner_reaches_its_objects(world: World):
    """The ids used above are real: their owner reads and downloads them."""
    for tenant in (world.a, world.b):
        headers = tenant.headers("read-only")
        job = tenant.jobs[0]
        for path in (
            f"/v1/files/{tenant.files[0]}",
            f"/v1/files/{tenant.files[0]}/content",
            f"/v1/fine_tuning/jobs/{job}",
            f"/v1/fine_tuning/jobs/{job}/adapter",
            f"/v1/fine_tuning/jobs/{job}/adapter?checkpoint={tenant.checkpoints[0]}",
            f"/v1/models/{tenant.models[0]}",
        ):
            resp = world.client.get(path, headers=headers)
            assert resp.status_code == 200, (path, resp.get_data(as_text=True)[:200])
            assert resp.get_data()  # read it whole: a download streams


def test_read_only_keys_cannot_change_anything(world: World):
    headers = world.b.headers("read-only")
    for rule, method in v1_rules(world):
        if method in ("GET",):
            continue
        path = placeholder_path(rule)
        resp = call(world, method, path, headers, json={})
        assert resp.status_code == 403, (method, rule.rule, resp.status_code)
        assert resp.get_json()["error"]["code"] == "insufficient_scope"


def test_member_keys_cannot_manage_keys_or_use_admin_routes(world: World):
    headers = world.a.headers("member")  # even in the operator organization
    for rule, method in v1_rules(world):
        if not rule.rule.startswith((ADMIN_PREFIX, "/v1/organization")):
            continue
        path = placeholder_path(rule)
        resp = call(world, method, path, headers, json={})
        assert resp.status_code == 403, (method, rule.rule, resp.status_code)
    # ...while everything else of /v1 is open to them.
    resp = world.client.post(
        "/v1/fine_tuning/jobs",
        headers=headers,
        json={"model": "tiny-random-llama", "training_file": world.a.files[0]},
    )
    assert resp.status_code == 200, resp.get_json()
    assert (
        world.client.post(
            f"/v1/fine_tuning/jobs/{resp.get_json()['id']}/cancel", headers=headers
        ).status_code
        == 200
    )


def test_admin_routes_need_an_operator_admin_key(world: World):
    admin_rules = [(r, m) for r, m in v1_rules(world) if r.rule.startswith(ADMIN_PREFIX)]
    assert admin_rules
    for rule, method in admin_rules:
        path = placeholder_path(rule)
        resp = call(world, method, path, world.b.headers("admin"), json={})
        assert resp.status_code == 403, (method, rule.rule, resp.status_code)
        err = resp.get_json()["error"]
        assert err["code"] == "permission_denied" and err["type"] == "invalid_request_error"
    # The operator's admin key is let through (and sees both organizations).
    resp = world.client.get("/v1/admin/organizations", headers=world.a.headers("admin"))
    assert resp.status_code == 200
    assert {world.a.org_id, world.b.org_id} <= {o["id"] for o in resp.get_json()["data"]}


def test_non_admin_key_management_is_scoped_to_the_own_organization(world: World):
    headers = world.b.headers("admin")
    listed = world.client.get("/v1/organization/api_keys", headers=headers).get_json()["data"]
    assert {k["organization_id"] for k in listed} == {world.b.org_id}
    assert all("key" not in k and "key_hash" not in k for k in listed)


def test_revocation_takes_effect_on_the_next_request(world: World):
    admin = world.b.headers("admin")
    created = world.client.post(
        "/v1/organization/api_keys", headers=admin, json={"name": "temp", "scope": "member"}
    )
    assert created.status_code == 200
    secret, key_id = created.get_json()["key"], created.get_json()["id"]
    temp = {"Authorization": f"Bearer {secret}"}
    assert world.client.get("/v1/files", headers=temp).status_code == 200
    listed = world.client.get("/v1/organization/api_keys", headers=admin).get_json()["data"]
    assert all("key" not in k for k in listed)  # the secret is never shown again
    assert (
        world.client.delete(f"/v1/organization/api_keys/{key_id}", headers=admin).status_code == 200
    )
    resp = world.client.get("/v1/files", headers=temp)
    assert resp.status_code == 401 and resp.get_json()["error"]["code"] == "invalid_api_key"


def test_dashboard_session_carries_the_keys_scope(world: World):
    client = world.app.test_client()
    page = client.get("/").get_data(as_text=True)
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
    resp = client.post("/login", data={"api_key": world.b.keys["read-only"], "csrf_token": csrf})
    assert resp.status_code == 303
    page = client.get("/").get_data(as_text=True)
    csrf = re.search(
        r'content="([^"]+)"[^>]*name="csrf-token"|name="csrf-token"[^>]*'
        r'content="([^"]+)"',
        page,
    )
    token = next(g for g in csrf.groups() if g)
    assert client.get("/v1/files").status_code == 200
    resp = client.delete(f"/v1/files/{world.b.files[0]}", headers={"X-CSRF-Token": token})
    assert resp.status_code == 403 and resp.get_json()["error"]["code"] == "insufficient_scope"
