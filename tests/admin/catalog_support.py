"""Helpers for the catalog/operations tests: run ``dorado-admin`` as a real subprocess
against a test database and object store."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

from tests.conftest import MODEL_CACHE

ROOT = Path(__file__).resolve().parents[2]
ADMIN = Path(sys.executable).parent / "dorado-admin"


def store_env(
    home: Path, database_url: str, s3: dict[str, str] | None, prefix: str | None = None
) -> dict[str, str]:
    """DORADO_* variables for a platform on ``database_url`` and (if given) moto S3, under a
    prefix of its own (moto's buckets outlive one test's server: they live in the process)."""
    prefix = prefix or f"store-{uuid.uuid4().hex[:8]}"
    env = {
        "DORADO_HOME": str(home),
        "DORADO_DATABASE_URL": database_url,
        "DORADO_MODEL_CACHE": str(home / "model-cache"),
    }
    if s3 is not None:
        env.update(
            {
                "DORADO_STORAGE_URL": f"s3://{s3['bucket']}/{prefix}",
                "DORADO_S3_ENDPOINT_URL": s3["endpoint"],
                "AWS_ACCESS_KEY_ID": s3["AWS_ACCESS_KEY_ID"],
                "AWS_SECRET_ACCESS_KEY": s3["AWS_SECRET_ACCESS_KEY"],
                "AWS_DEFAULT_REGION": s3["AWS_DEFAULT_REGION"],
            }
        )
    return env


def prepare_platform(
    home: Path, database_url: str, s3: dict[str, str] | None, api_key: str, monkeypatch: Any
) -> tuple[dict[str, str], Any]:
    """``store_env`` set in this process too, with ``api_key`` as the bootstrap key; the schema,
    built-in models and key created. Returns the env (for subprocesses) and the Settings."""
    from core.bootstrap import prepare_database
    from core.settings import load_settings

    env = store_env(home, database_url, s3)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("DORADO_BOOTSTRAP_API_KEY", api_key)
    settings = load_settings()
    prepare_database(settings)
    return env, settings


def run_admin(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    """``dorado-admin ARGS`` in a subprocess (no check: tests assert the exit code)."""
    # Wide enough that tables do not fold ids.
    return subprocess.run(
        [str(ADMIN), *args],
        cwd=ROOT,
        env={**os.environ, "COLUMNS": "250", **env},
        capture_output=True,
        text=True,
        timeout=300,
    )


def admin_json(env: dict[str, str], *args: str) -> Any:
    """``dorado-admin ARGS --json``, which must succeed; its parsed output."""
    done = run_admin(env, *args, "--json")
    assert done.returncode == 0, f"dorado-admin {' '.join(args)} failed:\n{done.stderr}"
    return json.loads(done.stdout)


def tiny_model_dir() -> Path:
    """The built tiny model (Hugging Face layout) in the test model cache, built if missing."""
    import tempfile

    from core.settings import load_settings
    from core.storage.objects import LocalStore

    path = MODEL_CACHE / "tiny-random-llama"
    if not (path / ".complete").exists():
        from worker.model_store import ensure_model

        settings = load_settings().model_copy(update={"model_cache_dir": MODEL_CACHE})
        with tempfile.TemporaryDirectory() as tmp:
            ensure_model(settings, LocalStore(Path(tmp)), "tiny-random-llama")
    return path
