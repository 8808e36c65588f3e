"""``dorado-admin orgs|keys|audit`` as real subprocesses against PostgreSQL: the secret is
printed once, a revoked key is refused on its very next request, errors exit non-zero."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.security.helpers import make_app

BIN = Path(sys.executable).parent / "dorado-admin"


def admin(home: Path, database_url: str, *args: str, check: bool = True, env: dict | None = None):
    """``dorado-admin ARGS`` as a subprocess; ``env`` adds variables (e.g. FORCE_COLOR)."""
    env = {
        **os.environ,
        "DORADO_HOME": str(home),
        "DORADO_DATABASE_URL": database_url,
        **(env or {}),
    }
    proc = subprocess.run([str(BIN), *args], env=env, capture_output=True, text=True, timeout=60)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def test_orgs_keys_and_audit_from_the_console(monkeypatch, tmp_path, postgres_url):
    api = make_app(monkeypatch, tmp_path / "home", DORADO_DATABASE_URL=postgres_url)
    run = lambda *args, **kw: admin(api.home, postgres_url, *args, **kw)  # noqa: E731

    org = json.loads(run("orgs", "create", "acme", "--max-queued-jobs", "5", "--json").stdout)
    assert org["name"] == "acme" and org["max_queued_jobs"] == 5 and not org["is_operator"]
    quota = json.loads(
        run(
            "orgs",
            "set-quota",
            org["id"],
            "--storage-quota-bytes",
            "1000",
            "--max-queued-jobs",
            "none",
            "--json",
        ).stdout
    )
    assert quota["storage_quota_bytes"] == 1000 and quota["max_queued_jobs"] is None
    listed = json.loads(run("orgs", "list", "--json").stdout)
    assert {o["name"] for o in listed} == {"default", "acme"}
    assert "acme" in run("orgs", "list").stdout  # the table for people

    # The secret: printed once by create (table and --json), never by list.
    human = run("keys", "create", org["id"], "--name", "deploy", "--scope", "member")
    secret = [line for line in human.stdout.splitlines() if line.startswith("dor-")]
    assert len(secret) == 1
    created = json.loads(
        run("keys", "create", org["id"], "--name", "ci", "--scope", "read-only", "--json").stdout
    )
    keys = run("keys", "list", org["id"], "--json").stdout
    assert secret[0] not in keys and created["key"] not in keys
    assert {k["scope"] for k in json.loads(keys)} == {"member", "read-only"}

    # The key works, is revoked from the console, and the next request is refused.
    headers = {"Authorization": f"Bearer {secret[0]}"}
    assert api.client.get("/v1/files", headers=headers).status_code == 200
    key_id = next(k["id"] for k in json.loads(keys) if k["name"] == "deploy")
    revoked = json.loads(run("keys", "revoke", key_id, "--json").stdout)
    assert revoked["revoked_at"] is not None
    resp = api.client.get("/v1/files", headers=headers)
    assert resp.status_code == 401

    # The console's actions are in the audit log, as cli:<user>.
    audit = json.loads(run("audit", "--org", org["id"], "--json").stdout)
    assert [e["action"] for e in audit] == [
        "api_key.revoke",
        "api_key.create",
        "api_key.create",
        "organization.set_quota",
        "organization.create",
    ]
    assert all(e["actor"].startswith("cli:") for e in audit)
    assert secret[0] not in json.dumps(audit)
    only = json.loads(run("audit", "--action", "api_key.revoke", "--since", "1h", "--json").stdout)
    assert [e["object_id"] for e in only] == [key_id]

    # Errors: a clear message and a non-zero exit.
    missing = run("keys", "revoke", "key_nope", check=False)
    assert missing.returncode == 1 and "No such API key" in missing.stderr
    bad = run("keys", "create", "org-nope", check=False)
    assert bad.returncode == 1 and "No such organization" in bad.stderr
    usage = run("keys", "create", org["id"], "--scope", "root", check=False)
    assert usage.returncode == 2
