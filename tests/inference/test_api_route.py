"""The API side of chat completions, against the real inference app with a stub engine (fast:
no model is loaded), and the API's independence from torch."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from werkzeug.serving import make_server

from api import create_app
from core.bootstrap import prepare_database
from core.settings import load_settings
from tests.conftest import ROOT
from tests.e2e.platform import free_port
from worker.inference.engine import Completion, GenerationParams
from worker.inference.server import create_app as create_inference_app

API_KEY = "dor-test-inference-key-000000"
HEADERS = {"Authorization": f"Bearer {API_KEY}"}


class StubEngine:
    """Records what it was asked and answers "Hello world" in two pieces."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any, GenerationParams]] = []
        self.organizations: list[str] = []
        self.store = None

    def loaded_adapters(self) -> list[str]:
        return []

    def complete(self, base, adapter, params: GenerationParams, *, organization) -> Completion:
        self.calls.append((base, adapter, params))
        self.organizations.append(organization)
        return Completion("Hello world", "stop", prompt_tokens=7, completion_tokens=2)

    def stream(
        self, base, adapter, params: GenerationParams, *, organization
    ) -> Iterator[str | Completion]:
        self.calls.append((base, adapter, params))
        self.organizations.append(organization)
        yield "Hello"
        yield " world"
        yield Completion("Hello world", "length", prompt_tokens=7, completion_tokens=2)


@pytest.fixture
def stub(monkeypatch) -> Iterator[tuple[StubEngine, str]]:
    # The API and the inference service trust each other through the shared platform secret.
    monkeypatch.setenv("DORADO_SECRET_KEY", "inference-test-secret")
    engine = StubEngine()
    server = make_server(
        "127.0.0.1", 0, create_inference_app(load_settings(), engine=engine), threaded=True
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield engine, f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()


def api_client(tmp_path, monkeypatch, inference_url: str):
    monkeypatch.setenv("DORADO_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DORADO_BOOTSTRAP_API_KEY", API_KEY)
    monkeypatch.setenv("DORADO_INFERENCE_URL", inference_url)
    settings = load_settings()
    prepare_database(settings)
    return create_app(settings).test_client()


def test_request_is_forwarded_and_answered(tmp_path, monkeypatch, stub) -> None:
    engine, url = stub
    client = api_client(tmp_path, monkeypatch, url)
    resp = client.post(
        "/v1/chat/completions",
        headers=HEADERS,
        json={
            "model": "tiny-random-llama",
            "max_completion_tokens": 9,
            "stop": "END",
            "seed": 5,
            "temperature": 0.5,
            "messages": [
                {"role": "developer", "content": "Be brief."},
                {"role": "user", "content": [{"type": "text", "text": "Hi"}]},
            ],
        },
    )
    assert resp.status_code == 200, resp.get_json()
    body = resp.get_json()
    assert body["object"] == "chat.completion" and body["model"] == "tiny-random-llama"
    assert body["choices"][0]["message"] == {
        "role": "assistant",
        "content": "Hello world",
        "refusal": None,
    }
    assert body["usage"] == {"prompt_tokens": 7, "completion_tokens": 2, "total_tokens": 9}
    base, adapter, params = engine.calls[-1]
    assert (base, adapter) == ("tiny-random-llama", None)
    assert params.messages == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
    ]
    assert (params.max_tokens, params.stop, params.seed, params.temperature) == (
        9,
        ("END",),
        5,
        0.5,
    )
    # The caller's organization goes along: the service serves organizations in turn.
    assert engine.organizations == [_organization_of(API_KEY)]


def _organization_of(secret: str) -> str:
    from sqlalchemy import select

    from core.db.engine import session_scope
    from core.db.models import ApiKey
    from core.tenancy.auth import hash_key

    with session_scope(load_settings().database_url) as session:
        query = select(ApiKey.organization_id).where(ApiKey.key_hash == hash_key(secret))
        return session.scalars(query).one()


def test_stream_is_relayed_as_server_sent_events(tmp_path, monkeypatch, stub) -> None:
    _engine, url = stub
    client = api_client(tmp_path, monkeypatch, url)
    resp = client.post(
        "/v1/chat/completions",
        headers=HEADERS,
        json={
            "model": "tiny-random-llama",
            "messages": [{"role": "user", "content": "Hi"}],
            "stream": True,
            "stream_options": {"include_usage": True},
        },
    )
    assert resp.status_code == 200 and resp.mimetype == "text/event-stream"
    events = [e for e in resp.get_data(as_text=True).split("\n\n") if e]
    assert events[-1] == "data: [DONE]"
    chunks = [json.loads(e[len("data: ") :]) for e in events[:-1]]
    assert [c["choices"][0]["delta"] for c in chunks[:-1]] == [
        {"role": "assistant", "content": ""},
        {"content": "Hello"},
        {"content": " world"},
        {},
    ]
    assert [c["choices"][0]["finish_reason"] for c in chunks[:-1]] == [None] * 3 + ["length"]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] == 9
    assert len({c["id"] for c in chunks}) == 1


def test_errors_before_forwarding(tmp_path, monkeypatch, stub) -> None:
    engine, url = stub
    client = api_client(tmp_path, monkeypatch, url)
    msgs = [{"role": "user", "content": "Hi"}]
    cases = [
        ({"model": "nope", "messages": msgs}, 404, "model_not_found"),
        ({"model": "tiny-random-llama", "messages": msgs, "n": 3}, 400, "invalid_value"),
        (
            {"model": "tiny-random-llama", "messages": msgs, "tools": [{"type": "function"}]},
            400,
            "unsupported_parameter",
        ),
        (
            {"model": "tiny-random-llama", "messages": [{"role": "tool", "content": "x"}]},
            400,
            "invalid_value",
        ),
    ]
    for body, status, code in cases:
        resp = client.post("/v1/chat/completions", headers=HEADERS, json=body)
        assert (resp.status_code, resp.get_json()["error"]["code"]) == (status, code), body
    assert client.post("/v1/chat/completions", json=cases[0][0]).status_code == 401
    assert engine.calls == []


def test_internal_endpoints_need_the_internal_token(tmp_path, monkeypatch, stub) -> None:
    engine, url = stub
    body = json.dumps(
        {
            "model": "tiny-random-llama",
            "base_model": "tiny-random-llama",
            "adapter": {"name": "ft:x", "prefix": "jobs/ftjob-other/adapter"},
            "messages": [{"role": "user", "content": "Hi"}],
        }
    ).encode()
    for headers in (
        {},
        {"Authorization": "Bearer " + "0" * 64},
        {"Authorization": f"Bearer {API_KEY}"},
    ):
        request = urllib.request.Request(
            url + "/internal/chat/completions",
            data=body,
            headers={"Content-Type": "application/json", **headers},
        )
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=10)
        assert refused.value.code == 401
        assert json.loads(refused.value.read())["error"]["code"] == "invalid_internal_token"
    assert engine.calls == []
    # An API whose secret differs is refused too, and says so as a server-side problem.
    api_client(tmp_path, monkeypatch, url)  # prepares the database
    monkeypatch.setenv("DORADO_SECRET_KEY", "another-secret")
    client = create_app(load_settings()).test_client()
    resp = client.post(
        "/v1/chat/completions",
        headers=HEADERS,
        json={"model": "tiny-random-llama", "messages": [{"role": "user", "content": "Hi"}]},
    )
    assert resp.status_code == 502 and resp.get_json()["error"]["code"] == "inference_error"
    assert engine.calls == []


def test_unreachable_inference_service_is_503(tmp_path, monkeypatch) -> None:
    from api import inference_client

    monkeypatch.setattr(inference_client, "STARTUP_WAIT_S", 0)
    client = api_client(tmp_path, monkeypatch, f"http://127.0.0.1:{free_port()}")
    resp = client.post(
        "/v1/chat/completions",
        headers=HEADERS,
        json={"model": "tiny-random-llama", "messages": [{"role": "user", "content": "Hi"}]},
    )
    assert resp.status_code == 503
    assert resp.get_json()["error"]["code"] == "inference_unavailable"
    assert resp.headers["Retry-After"]


def test_api_never_imports_torch() -> None:
    code = (
        "import sys; from api import create_app; import api.routes.inference; "
        "heavy = {'torch', 'transformers', 'peft'} & set(sys.modules); "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=120)
