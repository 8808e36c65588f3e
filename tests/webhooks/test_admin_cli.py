"""``dorado-admin webhooks ...`` as real subprocesses against PostgreSQL: the secret is printed
once and sealed with the platform secret, SSRF refusals exit 1 with the reason, the delivery
log and resend work from the console."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from sqlalchemy import select

from core.db.engine import session_scope
from core.db.models import AuditEvent, WebhookEndpoint
from core.jobs import lifecycle as jobs
from core.webhooks.signing import SecretBox
from tests.conftest import ROOT
from tests.webhooks.conftest import PLATFORM_SECRET, new_org, running_job

BIN = Path(sys.executable).parent / "dorado-admin"


def admin(tmp_path: Path, db_url: str, *args: str, allow_private: bool = True):
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "DORADO_HOME": str(tmp_path / "home"),
        "DORADO_DATABASE_URL": db_url,
        "DORADO_SECRET_KEY": PLATFORM_SECRET,
        "DORADO_WEBHOOKS_ALLOW_PRIVATE": "1" if allow_private else "0",
        "COLUMNS": "250",  # rich tables unwrapped
    }
    return subprocess.run(
        [str(BIN), "webhooks", *args], env=env, capture_output=True, text=True, timeout=60
    )


def test_webhooks_from_the_console(db_url, tmp_path):
    org = new_org(db_url)
    run = lambda *a, **kw: admin(tmp_path, db_url, *a, **kw)  # noqa: E731

    refused = run("create", org, "--url", "http://169.254.169.254/", "--event",
                  "fine_tuning.job.failed", allow_private=False)  # fmt: skip
    assert refused.returncode == 1 and "non-public address" in refused.stderr
    created = run("create", org, "--url", "http://127.0.0.1:9/hook", "--event",
                  "fine_tuning.job.failed", "--name", "ops", "--json")  # fmt: skip
    assert created.returncode == 0, created.stderr
    endpoint = json.loads(created.stdout)
    secret = endpoint["signing_secret"]
    with session_scope(db_url) as session:
        row = session.get(WebhookEndpoint, endpoint["id"])
        assert SecretBox(PLATFORM_SECRET).open(row.secret_encrypted) == secret
        assert secret not in row.secret_encrypted
        assert (
            session.scalar(select(AuditEvent.action).where(AuditEvent.object_id == endpoint["id"]))
            == "webhook_endpoint.create"
        )

    listed = run("list", org)
    assert listed.returncode == 0 and endpoint["id"] in listed.stdout
    assert secret not in listed.stdout and secret not in run("list", "--json").stdout

    job, attempt = running_job(db_url, org)
    with session_scope(db_url) as session:
        jobs.fail_job(session, job, attempt, code="boom", message="it broke")
    log = json.loads(run("deliveries", endpoint["id"], "--json").stdout)
    assert [(d["event_type"], d["job_id"], d["status"]) for d in log] == [
        ("fine_tuning.job.failed", job, "pending")
    ]
    resent = run("resend", log[0]["id"], "--json")
    assert resent.returncode == 0 and json.loads(resent.stdout)["status"] == "pending"

    disabled = json.loads(run("update", endpoint["id"], "--disable", "--json").stdout)
    assert disabled["enabled"] is False
    assert run("update", endpoint["id"]).returncode == 2  # nothing to change: usage error
    assert run("delete", endpoint["id"]).returncode == 0
    missing = run("deliveries", endpoint["id"])
    assert missing.returncode == 1 and "No such webhook endpoint" in missing.stderr
