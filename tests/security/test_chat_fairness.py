"""Chat completions are shared fairly: one organization's long answers do not make another's
short request wait for all of them (issue 21), and no request generates beyond the operator's
``DORADO_CHAT_MAX_TOKENS``.

The real inference app (tiny model) serves on a local port; organization A sends four long
streamed requests, then organization B a 4-token one, through the service's internal API with
the organization id the Dorado API forwards. The cap is checked through the Dorado API itself.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from collections.abc import Iterator

import pytest
from werkzeug.serving import make_server

from api import create_app
from core.bootstrap import prepare_database
from core.settings import load_settings
from core.storage.objects import LocalStore
from core.tenancy.secret import internal_token
from tests.conftest import MODEL_CACHE
from worker.inference.engine import GenerationParams, InferenceEngine
from worker.inference.server import create_app as create_inference_app

BASE = "tiny-random-llama"
CAP = 320
API_KEY = "dor-chat-fairness-key-00000000"
LONG = 300  # tokens of each of A's answers (the tiny random model rarely stops early)


@pytest.fixture(scope="module")
def service(tmp_path_factory) -> Iterator[str]:
    """The inference service with the real engine on the tiny model; its base URL."""
    import torch

    from worker.model_store import ensure_model

    home = tmp_path_factory.mktemp("chat-fairness")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("DORADO_SECRET_KEY", "chat-fairness-secret")
        env.setenv("DORADO_HOME", str(home / "home"))
        env.setenv("DORADO_CHAT_MAX_TOKENS", str(CAP))
        settings = load_settings().model_copy(update={"model_cache_dir": MODEL_CACHE})
        ensure_model(settings, LocalStore(home / "models"), BASE)
        engine = InferenceEngine(
            settings,
            LocalStore(home / "objects"),
            adapter_cache_size=2,
            adapter_dir=home / "adapters",
            model_loader=lambda name: MODEL_CACHE / name,
        )
        # One generation at a time uses one core; more threads only contend on a shared box.
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        # Loaded before the test: loading is once per process, not part of anyone's wait.
        engine.complete(
            BASE, None, GenerationParams(messages=[{"role": "user", "content": "Hi"}], max_tokens=1)
        )
        server = make_server("127.0.0.1", 0, create_inference_app(settings, engine), threaded=True)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield f"http://127.0.0.1:{server.server_port}"
        finally:
            server.shutdown()
            torch.set_num_threads(threads)


def chat(url: str, organization: str, max_tokens: int, done: dict[str, float], name: str) -> None:
    """A streamed completion as the Dorado API sends it; records when its stream ended."""
    body = {
        "model": BASE,
        "base_model": BASE,
        "adapter": None,
        "messages": [{"role": "user", "content": f"Tell me a long story, {name}."}],
        "max_tokens": max_tokens,
        "temperature": 0.0,
        "stream": True,
        "include_usage": True,
        "organization": organization,
    }
    request = urllib.request.Request(
        url + "/internal/chat/completions",
        data=json.dumps(body).encode(),
        headers={
            "Content-Type": "application/json",
            "Authorization": f"Bearer {internal_token(load_settings())}",
        },
    )
    with urllib.request.urlopen(request, timeout=600) as response:
        events = response.read().decode().split("\n\n")
    usage = json.loads(events[-3][len("data: ") :])["usage"]
    assert usage["completion_tokens"] == max_tokens, (name, usage)
    done[name] = time.monotonic()


def test_a_short_request_is_not_queued_behind_another_organizations_long_ones(service: str):
    done: dict[str, float] = {}
    threads = [
        threading.Thread(target=chat, args=(service, "org-a", LONG, done, f"a{i}"))
        for i in range(4)
    ]
    for thread in threads:
        thread.start()
    time.sleep(1.0)  # A's four requests are in: one generating, three waiting
    started = time.monotonic()
    chat(service, "org-b", 4, done, "b")
    b_wait = done["b"] - started
    for thread in threads:
        thread.join(timeout=600)
    a_ends = sorted(done[f"a{i}"] - started for i in range(4))
    print(f"\nB's 4 tokens: {b_wait:.2f} s; A's 4x{LONG} tokens end at {a_ends} s")
    assert len(done) == 5, done
    # Round-robin by organization in slices: B's turn comes after at most a slice of each
    # request ahead of it, not after A's whole queue (nor even one whole long answer).
    assert done["b"] < min(done[f"a{i}"] for i in range(4)), (b_wait, a_ends)
    assert b_wait < a_ends[0] / 2, (b_wait, a_ends)


def test_max_tokens_above_the_operators_cap_is_a_400_naming_it(
    service: str, tmp_path, monkeypatch
) -> None:
    monkeypatch.setenv("DORADO_SECRET_KEY", "chat-fairness-secret")
    monkeypatch.setenv("DORADO_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DORADO_BOOTSTRAP_API_KEY", API_KEY)
    monkeypatch.setenv("DORADO_INFERENCE_URL", service)
    monkeypatch.setenv("DORADO_CHAT_MAX_TOKENS", str(CAP))
    settings = load_settings()
    prepare_database(settings)
    client = create_app(settings).test_client()
    headers = {"Authorization": f"Bearer {API_KEY}"}
    question = [{"role": "user", "content": "Hi"}]
    for param in ("max_tokens", "max_completion_tokens"):
        resp = client.post(
            "/v1/chat/completions",
            headers=headers,
            json={"model": BASE, "messages": question, param: CAP + 1},
        )
        assert resp.status_code == 400, resp.get_json()
        error = resp.get_json()["error"]
        assert (error["param"], error["code"], error["type"]) == (
            param,
            "invalid_value",
            "invalid_request_error",
        )
        assert str(CAP) in error["message"] and str(CAP + 1) in error["message"]
    # At the cap it is served; without max_tokens the engine stops at the cap.
    for extra in ({"max_tokens": CAP}, {}):
        resp = client.post(
            "/v1/chat/completions",
            headers=headers,
            json={"model": BASE, "messages": question, "temperature": 0, **extra},
        )
        assert resp.status_code == 200, resp.get_json()
        body = resp.get_json()
        assert body["choices"][0]["finish_reason"] == "length"
        assert body["usage"]["completion_tokens"] == CAP
