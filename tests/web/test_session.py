"""The dashboard's server side without a browser: sign-in session, CSRF, revocation, security
headers, job progress fields and the pre-flight estimate (Flask test client, SQLite)."""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

import pytest
from flask.testing import FlaskClient
from sqlalchemy import update

from api import create_app
from core.bootstrap import prepare_database
from core.db.engine import session_scope
from core.db.models import ApiKey, Job
from core.jobs.lifecycle import add_event
from core.jobs.status import (
    FAILURE_HELP,
    FINAL_STATUSES,
    NON_FINAL_STATUSES,
    FailureCode,
    JobStatus,
)
from core.settings import load_settings
from core.tenancy.auth import create_organization
from core.tenancy.secret import persistent_secret
from core.timeutil import utcnow

KEY = "dor-web-session-key-00000000"
SCRIPTS = Path(__file__).resolve().parents[2] / "web" / "static" / "js"


def examples(n: int) -> bytes:
    return "".join(
        json.dumps(
            {
                "messages": [
                    {"role": "user", "content": f"Question {i}?"},
                    {"role": "assistant", "content": f"Answer number {i}."},
                ]
            }
        )
        + "\n"
        for i in range(n)
    ).encode()


def make_client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FlaskClient:
    monkeypatch.setenv("DORADO_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DORADO_BOOTSTRAP_API_KEY", KEY)
    settings = load_settings()
    prepare_database(settings)
    app = create_app(settings)
    app.config["DATABASE_URL"] = settings.database_url
    return app.test_client()


@pytest.fixture
def client(tmp_path, monkeypatch) -> Iterator[FlaskClient]:
    yield make_client(tmp_path, monkeypatch)


def sign_in(client: FlaskClient) -> str:
    """Sign in through the form; returns the page's CSRF token."""
    page = client.get("/").get_data(as_text=True)
    form_token = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
    resp = client.post("/login", data={"api_key": KEY, "csrf_token": form_token})
    assert resp.status_code == 303
    page = client.get("/").get_data(as_text=True)
    token = re.search(r'name="csrf-token" content="([^"]+)"', page).group(1)
    assert token != form_token  # a fresh token after sign-in
    return token


def upload(client: FlaskClient, token: str, n: int = 20) -> str:
    resp = client.post(
        "/v1/files",
        data={"file": (io.BytesIO(examples(n)), "t.jsonl"), "purpose": "fine-tune"},
        content_type="multipart/form-data",
        headers={"X-CSRF-Token": token},
    )
    assert resp.status_code == 200, resp.get_json()
    return resp.get_json()["id"]


def test_session_cookie_and_headers(client: FlaskClient):
    resp = client.get("/")
    assert "API key" in resp.get_data(as_text=True)
    assert "script-src 'self'" in resp.headers["Content-Security-Policy"]
    assert "'unsafe-inline'" not in resp.headers["Content-Security-Policy"]
    assert resp.headers["X-Frame-Options"] == "DENY"
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    assert resp.headers["Referrer-Policy"] == "same-origin"
    sign_in(client)
    cookie = client.get_cookie("dorado_session")
    assert cookie.http_only and cookie.same_site == "Lax" and not cookie.secure
    assert KEY not in cookie.value
    for path in ("/docs", "/v1/openapi.json", "/healthz", "/static/js/main.js"):
        assert client.get(path).status_code == 200, path
    assert "/v1/fine_tuning/jobs/estimate" in client.get("/v1/openapi.json").get_json()["paths"]


class _ScriptTags(HTMLParser):
    """The attributes and text of each <script> of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.scripts: list[tuple[dict[str, str | None], str]] = []
        self._inside = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "script":
            self.scripts.append((dict(attrs), ""))
            self._inside = True

    def handle_endtag(self, tag: str) -> None:
        self._inside = self._inside and tag != "script"

    def handle_data(self, data: str) -> None:
        if self._inside:
            attrs, text = self.scripts[-1]
            self.scripts[-1] = (attrs, text + data)


def dashboard_scripts(client: FlaskClient) -> list[tuple[dict[str, str | None], str]]:
    sign_in(client)
    parser = _ScriptTags()
    parser.feed(client.get("/").get_data(as_text=True))
    return parser.scripts


def test_page_carries_statuses_and_failure_help_from_core(client: FlaskClient):
    blocks = [
        json.loads(text)
        for attrs, text in dashboard_scripts(client)
        if attrs.get("id") == "dorado-enums"
    ]
    assert len(blocks) == 1
    enums = blocks[0]
    assert enums["status"] == {status.name: status.value for status in JobStatus}
    assert enums["statuses"] == [status.value for status in JobStatus]
    assert enums["groups"]["final"] == [status.value for status in FINAL_STATUSES]
    assert enums["groups"]["non_final"] == [status.value for status in NON_FINAL_STATUSES]
    assert enums["failure_help"] == {code.value: FAILURE_HELP[code] for code in FailureCode}


def test_page_carries_the_chat_token_cap_from_settings(tmp_path, monkeypatch):
    """The playground's "Max tokens" goes up to the cap the API enforces, whatever it is set to."""
    monkeypatch.setenv("DORADO_CHAT_MAX_TOKENS", "333")
    client = make_client(tmp_path, monkeypatch)
    blocks = [
        json.loads(text)
        for attrs, text in dashboard_scripts(client)
        if attrs.get("id") == "dorado-enums"
    ]
    assert blocks[0]["limits"] == {"chat_max_tokens": 333}


def without_comments(source: str) -> str:
    """JavaScript source less its /* */ and // comments (which may quote values)."""
    return re.sub(r"(^|\s)//[^\n]*", "", re.sub(r"/\*.*?\*/", "", source, flags=re.S))


def test_scripts_keep_no_copy_of_the_statuses_or_failure_help():
    sources = {path.name: without_comments(path.read_text()) for path in SCRIPTS.rglob("*.js")}
    assert "main.js" in sources and "job.js" in sources
    for name, source in sources.items():
        for status in JobStatus:
            assert f'"{status.value}"' not in source, (name, status)
        for code, help_text in FAILURE_HELP.items():
            assert f'"{code.value}"' not in source, (name, code)
            assert help_text[:40] not in source, (name, code)


def test_scripts_are_same_origin_modules_the_policy_allows(client: FlaskClient):
    """Module scripts run only with a JavaScript MIME type; the page has no inline code
    (its one inline block is JSON data, which CSP does not treat as script)."""
    scripts = dashboard_scripts(client)
    policy = client.get("/").headers["Content-Security-Policy"]
    assert "script-src 'self'" in policy and "'unsafe-inline'" not in policy
    for attrs, text in scripts:
        if attrs.get("type") == "application/json":
            continue
        assert attrs.get("type") == "module" and not text.strip()
        assert attrs["src"].startswith("/static/")
    modules = [attrs["src"] for attrs, _ in scripts if attrs.get("type") == "module"]
    assert modules == ["/static/js/main.js"]
    for path in SCRIPTS.rglob("*.js"):
        url = "/static/js/" + path.relative_to(SCRIPTS).as_posix()
        resp = client.get(url)
        assert resp.status_code == 200, url
        assert resp.mimetype == "text/javascript", (url, resp.mimetype)


def test_wrong_key_and_missing_form_token_are_refused(client: FlaskClient):
    page = client.get("/").get_data(as_text=True)
    token = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
    assert (
        client.post("/login", data={"api_key": "dor-wrong", "csrf_token": token}).status_code == 401
    )
    assert client.post("/login", data={"api_key": KEY}).status_code == 403
    assert client.get("/v1/models").status_code == 401


def test_csrf_is_required_for_state_changes(client: FlaskClient):
    token = sign_in(client)
    assert client.get("/v1/models").status_code == 200
    resp = client.post(
        "/v1/files",
        data={"file": (io.BytesIO(examples(12)), "t.jsonl"), "purpose": "fine-tune"},
        content_type="multipart/form-data",
    )
    assert resp.status_code == 403 and resp.get_json()["error"]["code"] == "csrf_failed"
    assert client.delete("/v1/files/file-x", headers={"X-CSRF-Token": "nope"}).status_code == 403
    assert client.post("/logout", data={"csrf_token": "nope"}).status_code == 403
    upload(client, token)
    # A bearer key still works without any token (the API's own clients).
    assert client.get("/v1/models", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
    assert client.post("/logout", data={"csrf_token": token}).status_code == 303
    assert client.get("/v1/models").status_code == 401


def test_revoking_the_key_ends_the_session(client: FlaskClient):
    sign_in(client)
    with session_scope(client.application.config["DATABASE_URL"]) as session:
        session.execute(update(ApiKey).values(revoked_at=utcnow()))
    assert client.get("/v1/models").status_code == 401
    assert "API key" in client.get("/").get_data(as_text=True)


def test_progress_and_queue_position(client: FlaskClient):
    token = sign_in(client)
    file_id = upload(client, token)
    body = {"model": "tiny-random-llama", "training_file": file_id}
    ids = [
        client.post("/v1/fine_tuning/jobs", json=body, headers={"X-CSRF-Token": token}).get_json()[
            "id"
        ]
        for _ in range(3)
    ]
    with session_scope(client.application.config["DATABASE_URL"]) as session:
        session.execute(update(Job).where(Job.id == ids[0]).values(status="running"))
        # No validator runs here: put the others where validation would.
        session.execute(update(Job).where(Job.id.in_(ids[1:])).values(status="queued"))
        add_event(
            session,
            ids[0],
            "Step 5/20",
            type="metrics",
            data={"step": 5, "total_steps": 20, "train_loss": 1.0},
        )
        add_event(
            session,
            ids[0],
            "Step 10/20",
            type="metrics",
            data={"step": 10, "total_steps": 20, "train_loss": 0.9},
        )
    listed = {j["id"]: j for j in client.get("/v1/fine_tuning/jobs").get_json()["data"]}
    assert listed[ids[0]]["progress"] == {"step": 10, "total_steps": 20, "percent": 50.0}
    assert listed[ids[0]]["queue_position"] is None
    assert [listed[i]["queue_position"] for i in ids[1:]] == [1, 2]
    assert listed[ids[1]]["progress"] is None
    one = client.get(f"/v1/fine_tuning/jobs/{ids[2]}").get_json()
    assert one["queue_position"] == 2
    running = client.get(f"/v1/fine_tuning/jobs/{ids[0]}").get_json()
    assert running["progress"] == {"step": 10, "total_steps": 20, "percent": 50.0}
    assert running["queue_position"] is None

    # Positions follow the dispatch order (core.scheduling.dispatch), not creation order: another
    # organization with nothing running goes first, and a higher priority jumps the queue.
    with session_scope(client.application.config["DATABASE_URL"]) as session:
        other = create_organization(session, "other")
        session.add(
            Job(
                id="ftjob-other-org-queued",
                organization_id=other.id,
                model="tiny-random-llama",
                status="queued",
                training_file="file-x",
                hyperparameters={},
                adapter={},
                method={},
                seed=0,
                result_files=[],
                created_at=utcnow(),
            )
        )
        session.execute(update(Job).where(Job.id == ids[2]).values(priority=5))
    listed = {j["id"]: j for j in client.get("/v1/fine_tuning/jobs").get_json()["data"]}
    assert "ftjob-other-org-queued" not in listed
    assert [listed[i]["queue_position"] for i in ids[1:]] == [3, 1]


def test_estimate(client: FlaskClient):
    token = sign_in(client)
    file_id = upload(client, token, n=20)
    body = {
        "model": "smollm2-135m-instruct",
        "training_file": file_id,
        "hyperparameters": {"n_epochs": 3, "batch_size": 8},
        "adapter": {"type": "lora", "r": 4},
    }
    resp = client.post("/v1/fine_tuning/jobs/estimate", json=body, headers={"X-CSRF-Token": token})
    est = resp.get_json()
    assert resp.status_code == 200, est
    assert est["example_count"] == 20
    assert est["steps_per_epoch"] == 3 and est["total_steps"] == 9
    assert est["hyperparameters"] == {
        "n_epochs": 3,
        "batch_size": 8,
        "learning_rate_multiplier": 1.0,
    }
    assert est["adapter"]["type"] == "lora" and est["adapter"]["r"] == 4
    assert est["tokens_are_estimated"] is True
    assert est["estimated_total_tokens"] == 3 * est["estimated_tokens_per_epoch"] > 0
    assert est["estimated_seconds"] > est["estimated_total_tokens"] / 150
    bad = client.post(
        "/v1/fine_tuning/jobs/estimate",
        json={**body, "model": "nope"},
        headers={"X-CSRF-Token": token},
    )
    assert bad.status_code == 400  # what job creation answers (OpenAI's model_not_available)
    assert bad.get_json()["error"]["code"] == "model_not_available"
    bad = client.post(
        "/v1/fine_tuning/jobs/estimate", json={**body, "extra": 1}, headers={"X-CSRF-Token": token}
    )
    assert bad.status_code == 400
    # Nothing was created.
    assert client.get("/v1/fine_tuning/jobs").get_json()["data"] == []


def test_persistent_secret_is_shared(tmp_path):
    first = persistent_secret(tmp_path / "h" / "secret_key")
    assert first == persistent_secret(tmp_path / "h" / "secret_key") and len(first) == 64
    assert (tmp_path / "h" / "secret_key").stat().st_mode & 0o077 == 0
