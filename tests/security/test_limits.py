"""Limits: the per-key rate limit (429 + retry-after, shared through Redis, honoured by the
openai SDK), JSON and upload size (413), content types (415), the storage quota."""

from __future__ import annotations

import io
import logging
import threading
import time

import pytest
from werkzeug.http import parse_options_header
from werkzeug.serving import make_server

from tests.security.conftest import chat_lines, upload
from tests.security.helpers import KEY, make_app


def test_rate_limit_per_key_in_process(monkeypatch, tmp_path):
    api = make_app(monkeypatch, tmp_path / "home", DORADO_RATE_LIMIT_PER_MINUTE="5")
    remaining = []
    for _ in range(5):
        resp = api.client.get("/v1/files", headers=api.headers)
        assert resp.status_code == 200
        assert resp.headers["x-ratelimit-limit-requests"] == "5"
        remaining.append(int(resp.headers["x-ratelimit-remaining-requests"]))
    assert remaining == [4, 3, 2, 1, 0]
    resp = api.client.get("/v1/files", headers=api.headers)
    assert resp.status_code == 429
    err = resp.get_json()["error"]
    assert err["type"] == "rate_limit_error" and err["code"] == "rate_limit_exceeded"
    # One token comes back every 12 s at 5 per minute.
    assert 10 <= int(resp.headers["retry-after"]) <= 12
    assert 10_000 <= int(resp.headers["retry-after-ms"]) <= 12_000
    assert resp.headers["x-ratelimit-remaining-requests"] == "0"
    # Per key: another key of the same organization is not limited by the first one's use.
    from core.db.engine import session_scope
    from core.settings import load_settings
    from core.tenancy import auth

    with session_scope(load_settings().database_url) as session:
        org_id = auth.find_key(session, KEY).organization_id
        other = auth.create_key(session, org_id, scope="member").secret
    resp = api.client.get("/v1/files", headers={"Authorization": f"Bearer {other}"})
    assert resp.status_code == 200


def test_rate_limit_is_shared_through_redis(monkeypatch, tmp_path, redis_url):
    """Two app instances (as two gunicorn processes) draw from one bucket in Redis."""
    first = make_app(
        monkeypatch,
        tmp_path / "home",
        DORADO_RATE_LIMIT_PER_MINUTE="4",
        DORADO_BROKER_URL=redis_url,
    )
    from api import create_app
    from core.settings import load_settings

    second = create_app(load_settings()).test_client()
    statuses = [
        client.get("/v1/models", headers=first.headers).status_code
        for client in (first.client, second, first.client, second, first.client, second)
    ]
    assert statuses == [200, 200, 200, 200, 429, 429]
    import redis

    assert redis.Redis.from_url(redis_url).keys("dorado:ratelimit:*")


def test_rate_limit_fails_open_without_redis(monkeypatch, tmp_path, caplog):
    api = make_app(
        monkeypatch,
        tmp_path / "home",
        DORADO_RATE_LIMIT_PER_MINUTE="1",
        DORADO_BROKER_URL="redis://127.0.0.1:9/0",
    )
    with caplog.at_level(logging.WARNING, logger="core.tenancy.ratelimit"):
        for _ in range(3):
            assert api.client.get("/v1/models", headers=api.headers).status_code == 200
    assert "Redis unreachable" in caplog.text


def test_openai_sdk_gets_rate_limit_error_and_honours_retry_after(monkeypatch, tmp_path):
    from openai import OpenAI, RateLimitError

    api = make_app(monkeypatch, tmp_path / "home", DORADO_RATE_LIMIT_PER_MINUTE="60")
    server = make_server("127.0.0.1", 0, api.app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        base_url = f"http://127.0.0.1:{server.server_port}/v1"
        for _ in range(60):  # spend the bucket: one token back per second from now on
            api.client.get("/v1/models", headers=api.headers)
        with pytest.raises(RateLimitError):
            OpenAI(base_url=base_url, api_key=KEY, max_retries=0).models.list()
        refused = api.client.get("/v1/models", headers=api.headers)
        assert refused.status_code == 429
        wait = int(refused.headers["retry-after-ms"]) / 1000
        started = time.monotonic()
        models = OpenAI(base_url=base_url, api_key=KEY, max_retries=2).models.list()
        # It was refused, waited as told (not its own backoff of ~0.5 s), then succeeded.
        assert models.data and time.monotonic() - started >= wait - 0.2
    finally:
        server.shutdown()


def test_json_body_over_the_limit_is_413(monkeypatch, tmp_path):
    api = make_app(monkeypatch, tmp_path / "home", DORADO_MAX_JSON_BYTES="2000")
    body = {
        "model": "tiny-random-llama",
        "training_file": "file-x",
        "metadata": {"pad": "x" * 3000},
    }
    resp = api.client.post("/v1/fine_tuning/jobs", json=body, headers=api.headers)
    assert resp.status_code == 413
    assert resp.get_json()["error"]["code"] == "payload_too_large"
    # Without a Content-Length (chunked), reading past the limit is refused all the same.
    resp = api.client.post(
        "/v1/fine_tuning/jobs",
        headers={**api.headers, "Content-Type": "application/json", "Transfer-Encoding": "chunked"},
        input_stream=io.BytesIO(b'{"model": "' + b"x" * 5000 + b'"}'),
        environ_base={"wsgi.input_terminated": True},
    )  # as gunicorn sets for chunked bodies
    assert resp.status_code == 413
    assert resp.get_json()["error"]["type"] == "invalid_request_error"


def test_upload_over_the_limit_is_413(monkeypatch, tmp_path):
    api = make_app(monkeypatch, tmp_path / "home", DORADO_MAX_UPLOAD_BYTES="500")
    resp = upload(api.client, api.headers, chat_lines(20, "big"))
    assert resp.status_code == 413
    assert resp.get_json()["error"]["code"] == "payload_too_large"
    # Beyond the request limit (upload limit + 1 MiB of form overhead) werkzeug refuses it.
    resp = upload(api.client, api.headers, b"x" * (2 * 1024 * 1024))
    assert resp.status_code == 413 and resp.get_json()["error"]["message"]


def test_wrong_content_type_is_415(monkeypatch, tmp_path):
    api = make_app(monkeypatch, tmp_path / "home")
    resp = api.client.post(
        "/v1/fine_tuning/jobs", data="model=x", headers=api.headers, content_type="text/plain"
    )
    assert resp.status_code == 415
    assert resp.get_json()["error"]["code"] == "unsupported_media_type"
    resp = api.client.post("/v1/files", json={"file": "x"}, headers=api.headers)
    assert resp.status_code == 415
    # What the SDK sends passes: JSON with a charset, multipart uploads.
    resp = api.client.post(
        "/v1/fine_tuning/jobs/estimate",
        data=b'{"model": "x"}',
        headers=api.headers,
        content_type="application/json; charset=utf-8",
    )
    assert resp.status_code == 400  # past the type check: "training_file required"
    assert upload(api.client, api.headers, chat_lines(10, "ok")).status_code == 200


def test_storage_quota(monkeypatch, tmp_path):
    api = make_app(monkeypatch, tmp_path / "home")
    first = upload(api.client, api.headers, chat_lines(10, "one"))
    assert first.status_code == 200
    size = first.get_json()["bytes"]
    org_id = api.client.get("/v1/admin/organizations", headers=api.headers).get_json()["data"][0][
        "id"
    ]
    resp = api.client.post(
        f"/v1/admin/organizations/{org_id}",
        headers=api.headers,
        json={"storage_quota_bytes": size + 100},
    )
    assert resp.status_code == 200 and resp.get_json()["storage_quota_bytes"] == size + 100
    resp = upload(api.client, api.headers, chat_lines(10, "two"))
    assert resp.status_code == 400
    err = resp.get_json()["error"]
    assert err["code"] == "storage_quota_exceeded" and err["param"] == "file"
    listed = api.client.get("/v1/files", headers=api.headers).get_json()["data"]
    assert len(listed) == 1  # nothing stored
    stored = list((api.home / "objects" / "files").iterdir())
    assert len(stored) == 1
    # Deleting frees the quota.
    assert (
        api.client.delete(f"/v1/files/{first.get_json()['id']}", headers=api.headers).status_code
        == 200
    )
    assert upload(api.client, api.headers, chat_lines(10, "two")).status_code == 200


def test_download_filename_is_encoded(monkeypatch, tmp_path):
    """A quote, a semicolon or non-ASCII in an uploaded name cannot break the header."""
    api = make_app(monkeypatch, tmp_path / "home")
    name = 'we"ird; x=1 données.jsonl'
    # Written by hand: werkzeug's test client would not escape the quote, a crafted one can.
    part = (
        '--B\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nfine-tune\r\n'
        '--B\r\nContent-Disposition: form-data; name="file"; filename="'
        + name.replace('"', '\\"')
        + '"\r\n\r\n'
    ).encode()
    resp = api.client.post(
        "/v1/files",
        headers=api.headers,
        content_type="multipart/form-data; boundary=B",
        data=part + chat_lines(10, "n") + b"\r\n--B--\r\n",
    )
    assert resp.get_json()["filename"] == name
    file_id = resp.get_json()["id"]
    resp = api.client.get(f"/v1/files/{file_id}/content", headers=api.headers)
    assert resp.status_code == 200
    header = resp.headers["Content-Disposition"]
    disposition, params = parse_options_header(header)
    assert disposition == "attachment"
    assert params == {"filename": name}  # filename* (RFC 5987) decoded; no injected "x"
    assert "filename*=UTF-8''" in header and header.isascii()
    resp.close()


def test_nul_characters_are_refused_not_a_500(monkeypatch, tmp_path, postgres_url):
    """PostgreSQL cannot hold NUL: found by the fuzz test as 500s; now 400 everywhere."""
    api = make_app(monkeypatch, tmp_path / "home", DORADO_DATABASE_URL=postgres_url)
    for resp in (
        api.client.post(
            "/v1/fine_tuning/jobs",
            headers=api.headers,
            json={"model": "tiny\x00", "training_file": "file-x"},
        ),
        api.client.get("/v1/files/file-%00", headers=api.headers),
        api.client.get("/v1/files?after=file-%00", headers=api.headers),
        upload(api.client, api.headers, chat_lines(10, "nul"), "a\x00.jsonl"),
    ):
        assert resp.status_code == 400, resp.get_data(as_text=True)
        assert resp.get_json()["error"]["code"] == "invalid_value"
