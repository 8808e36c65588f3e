"""Tenant-chosen text in ``dorado-admin``'s output is shown as it is: never read as rich
markup (a key named ``[/]`` crashed ``keys list``; ``[link=...]`` became a clickable link in
the operator's terminal), and terminal control characters are shown escaped."""

from __future__ import annotations

import json

from core.db.engine import session_scope
from core.db.models import Job
from core.jobs.lifecycle import add_event
from core.timeutil import utcnow
from tests.security.helpers import make_app
from tests.security.test_cli import admin

CLOSING_TAG = "[/]"
LINK = "[link=http://x]y[/link]"
ESCAPE = "red\x1b[31malert"
# A terminal (rich would then write colours and OSC 8 hyperlinks), wide enough not to fold.
TERMINAL = {"FORCE_COLOR": "1", "COLUMNS": "250"}


def test_tenant_key_names_are_shown_literally(monkeypatch, tmp_path, postgres_url):
    api = make_app(monkeypatch, tmp_path / "home", DORADO_DATABASE_URL=postgres_url)
    org = json.loads(admin(api.home, postgres_url, "orgs", "create", "tenant", "--json").stdout)
    tenant_admin = json.loads(
        admin(
            api.home, postgres_url, "keys", "create", org["id"], "--scope", "admin", "--json"
        ).stdout
    )
    # The tenant names its keys through the API, as any organization admin may.
    for name in (CLOSING_TAG, LINK, ESCAPE):
        resp = api.client.post(
            "/v1/organization/api_keys",
            json={"name": name, "scope": "member"},
            headers={"Authorization": f"Bearer {tenant_admin['key']}"},
        )
        assert resp.status_code == 200, resp.get_json()

    listed = admin(api.home, postgres_url, "keys", "list", org["id"], env=TERMINAL)
    assert listed.returncode == 0, listed.stderr
    assert CLOSING_TAG in listed.stdout and LINK in listed.stdout
    assert "\x1b]8;" not in listed.stdout  # no OSC 8 hyperlink escape
    assert "red\\x1b[31malert" in listed.stdout and ESCAPE not in listed.stdout

    # An error message quoting an argument, and a title quoting it, stay literal too.
    missing = admin(api.home, postgres_url, "keys", "list", LINK, check=False, env=TERMINAL)
    assert missing.returncode == 1
    assert f"No such organization: {LINK}" in missing.stderr
    assert "\x1b]8;" not in missing.stderr


def test_tenant_target_modules_quoted_in_a_job_error_are_shown_literally(
    monkeypatch, tmp_path, postgres_url
):
    api = make_app(monkeypatch, tmp_path / "home", DORADO_DATABASE_URL=postgres_url)
    org = json.loads(admin(api.home, postgres_url, "orgs", "create", "tenant", "--json").stdout)
    # A job whose tenant-chosen target modules do not exist fails with an error quoting them.
    quoted = f"Target modules {[CLOSING_TAG, LINK]} not found in the base model."
    with session_scope(postgres_url) as session:
        session.add(
            Job(
                id="ftjob-markup",
                organization_id=org["id"],
                model="tiny-random-llama",
                status="failed",
                training_file="file-x",
                hyperparameters={},
                adapter={"type": "lora", "target_modules": [CLOSING_TAG, LINK]},
                method={},
                seed=1,
                result_files=[],
                options={},
                created_at=utcnow(),
                attempt=1,
                pause_requested=False,
                error={"code": "invalid_adapter", "message": quoted, "param": None},
            )
        )
        session.flush()
        add_event(session, "ftjob-markup", quoted, level="error")
    shown = admin(api.home, postgres_url, "jobs", "show", "ftjob-markup", env=TERMINAL)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.count(f"'{CLOSING_TAG}', '{LINK}'") == 2  # error and recent event
    assert "\x1b]8;" not in shown.stdout
