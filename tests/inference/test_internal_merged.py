"""``POST /internal/merged`` without an adapter is a clear 400, before any model is loaded."""

from __future__ import annotations

from pathlib import Path

from core.settings import load_settings
from core.storage.objects import LocalStore
from core.tenancy.secret import internal_token
from worker.inference.engine import InferenceEngine
from worker.inference.server import create_app


def test_a_merge_without_an_adapter_is_refused(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("DORADO_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DORADO_SECRET_KEY", "merged-test-secret")
    settings = load_settings()
    loaded: list[str] = []

    def load_model(name: str) -> Path:
        loaded.append(name)
        return tmp_path / name

    engine = InferenceEngine(
        settings,
        LocalStore(tmp_path / "store"),
        adapter_cache_size=1,
        adapter_dir=tmp_path / "adapters",
        model_loader=load_model,
    )
    client = create_app(settings, engine=engine).test_client()
    headers = {"Authorization": f"Bearer {internal_token(settings)}"}

    for body in (
        {"job_id": "ftjob-1", "base_model": "tiny", "adapter": None},
        {"job_id": "ftjob-1", "base_model": "tiny"},
    ):
        resp = client.post("/internal/merged", json=body, headers=headers)
        assert resp.status_code == 400, resp.get_data(as_text=True)
        error = resp.get_json()["error"]
        assert error["code"] == "missing_adapter"
        assert error["param"] == "adapter"
    assert loaded == []
