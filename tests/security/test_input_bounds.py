"""Hostile input is a clear 400, never a 500 (which the SDK would retry): JSON nested
100,000 deep, integers of thousands of digits; a client's X-Request-Id is echoed only when it
looks like an id."""

from __future__ import annotations

import pytest

from tests.security.helpers import make_app

ROUTES = ("/v1/fine_tuning/jobs", "/v1/fine_tuning/jobs/estimate", "/v1/organization/api_keys")


@pytest.fixture
def api(monkeypatch, tmp_path):
    return make_app(monkeypatch, tmp_path / "home")


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize(
    "body",
    [
        "[" * 100_000 + "]" * 100_000,
        '{"model": ' + '{"a": ' * 5_000 + "1" + "}" * 5_000 + "}",
        '{"model": "tiny-random-llama", "training_file": "file-x", "seed": ' + "9" * 5_000 + "}",
        '{"model": "tiny-random-llama", "training_file": "file-x", "seed": ' + "9" * 4_000 + "}",
    ],
    ids=["nested-array-100k", "nested-object-5k", "int-5000-digits", "int-4000-digits"],
)
def test_hostile_json_is_a_400(api, route, body):
    resp = api.client.post(
        route, headers={**api.headers, "Content-Type": "application/json"}, data=body
    )
    assert resp.status_code == 400, resp.get_data(as_text=True)[:300]
    err = resp.get_json()["error"]
    assert err["type"] == "invalid_request_error"
    assert err["code"] in ("invalid_json", "invalid_value"), err


def test_reasonable_json_still_parses(api):
    body = {"name": "n", "scope": "member", "deep": [[[[[[[[1]]]]]]]], "big": 2**63 - 1}
    resp = api.client.post("/v1/organization/api_keys", headers=api.headers, json=body)
    assert resp.status_code == 200, resp.get_json()  # unknown fields are ignored here


@pytest.mark.parametrize(
    "sent",
    ["x" * 8192, "<script>alert(1)</script>", 'id"quoted"', "a b", ""],
    ids=["8kb", "html", "quote", "space", "empty"],
)
def test_malformed_request_ids_are_replaced(api, sent):
    resp = api.client.get("/v1/models", headers={**api.headers, "X-Request-Id": sent})
    echoed = resp.headers["x-request-id"]
    assert echoed != sent and echoed.startswith("req_") and len(echoed) < 64


def test_well_formed_request_ids_are_kept(api):
    for sent in ("req_0123abc", "3f2c1e2a-8d4b-4c1e-9f00-6a7b8c9d0e1f", "trace.1:span-2"):
        resp = api.client.get("/v1/models", headers={**api.headers, "X-Request-Id": sent})
        assert resp.headers["x-request-id"] == sent
