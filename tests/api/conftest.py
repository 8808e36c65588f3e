from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

import pytest
from flask.testing import FlaskClient

from api import create_app
from core.bootstrap import prepare_database
from core.settings import load_settings

API_KEY = "dor-test-key-0123456789abcdef"


@dataclass
class Api:
    client: FlaskClient
    home: Path
    headers: dict[str, str]

    def upload(self, lines: list, filename: str = "train.jsonl", purpose: str = "fine-tune"):
        body = "".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines)
        data = {"file": (io.BytesIO(body.encode()), filename), "purpose": purpose}
        return self.client.post(
            "/v1/files", data=data, headers=self.headers, content_type="multipart/form-data"
        )

    def post(self, path: str, body: dict):
        return self.client.post(path, json=body, headers=self.headers)

    def get(self, path: str):
        return self.client.get(path, headers=self.headers)


def chat_examples(n: int = 12) -> list[dict]:
    return [
        {
            "messages": [
                {"role": "user", "content": f"Question {i}?"},
                {"role": "assistant", "content": f"Answer {i}."},
            ]
        }
        for i in range(n)
    ]


def preference_examples(n: int = 12) -> list[dict]:
    return [
        {
            "input": {"messages": [{"role": "user", "content": f"Question {i}?"}]},
            "preferred_output": [{"role": "assistant", "content": f"Arr, answer {i}!"}],
            "non_preferred_output": [{"role": "assistant", "content": f"Answer {i}."}],
        }
        for i in range(n)
    ]


def succeeded_job(api: Api, file_id: str, adapter: dict) -> dict:
    """A supervised job, marked succeeded through the same service the worker uses."""
    from sqlalchemy import update

    from core.db.engine import session_scope
    from core.db.models import Job
    from core.jobs import lifecycle
    from core.settings import load_settings

    body = {"model": "tiny-random-llama", "training_file": file_id, "adapter": adapter}
    job = api.post("/v1/fine_tuning/jobs", body).get_json()
    with session_scope(load_settings().database_url) as session:
        session.execute(update(Job).where(Job.id == job["id"]).values(status="running", attempt=1))
        name = lifecycle.succeed_job(
            session, job["id"], 1, trained_tokens=1, adapter_key="k", result_files=[]
        )
    assert name is not None
    return api.get(f"/v1/fine_tuning/jobs/{job['id']}").get_json()


@pytest.fixture(params=["sqlite", "postgres"])
def api(request, tmp_path, monkeypatch) -> Api:
    monkeypatch.setenv("DORADO_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DORADO_BOOTSTRAP_API_KEY", API_KEY)
    # Jobs created here are published to a broker folder nobody consumes: that is fine.
    if request.param == "postgres":
        monkeypatch.setenv("DORADO_DATABASE_URL", request.getfixturevalue("postgres_url"))
    settings = load_settings()
    prepare_database(settings)
    app = create_app(settings)
    return Api(app.test_client(), settings.home, {"Authorization": f"Bearer {API_KEY}"})
