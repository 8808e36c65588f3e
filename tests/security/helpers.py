"""A small in-process API for the limit, quota and audit tests (SQLite unless told)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient

KEY = "dor-security-test-key-0000000000"


@dataclass
class App:
    app: Flask
    client: FlaskClient
    home: Path
    headers: dict[str, str]


def make_app(monkeypatch: pytest.MonkeyPatch, home: Path, **env: str) -> App:
    """The API with its bootstrap (operator, admin) key; ``env`` sets DORADO_* variables."""
    from api import create_app
    from core.bootstrap import prepare_database
    from core.settings import load_settings

    monkeypatch.setenv("DORADO_HOME", str(home))
    monkeypatch.setenv("DORADO_BOOTSTRAP_API_KEY", KEY)
    for name in (
        "DORADO_DATABASE_URL",
        "DORADO_BROKER_URL",
        "DORADO_RATE_LIMIT_PER_MINUTE",
        "DORADO_MAX_JSON_BYTES",
        "DORADO_MAX_UPLOAD_BYTES",
        "DORADO_RATE_LIMIT_PER_ORGANIZATION_PER_MINUTE",
        "DORADO_MAX_KEYS_PER_ORGANIZATION",
        "DORADO_DEFAULT_MAX_QUEUED_JOBS",
        "DORADO_MAX_JOB_SECONDS",
    ):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = load_settings()
    prepare_database(settings)
    app = create_app(settings)
    return App(app, app.test_client(), settings.home, {"Authorization": f"Bearer {KEY}"})


def small_gguf(path: Path, tensors: int = 1) -> Path:
    """A real (if tiny) GGUF model file: header, metadata and ``tensors`` tensors."""
    import numpy as np
    from gguf import GGUFWriter

    writer = GGUFWriter(path, "llama")
    writer.add_block_count(1)
    for i in range(tensors):
        writer.add_tensor(f"blk.{i}.weight", np.zeros((16, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
