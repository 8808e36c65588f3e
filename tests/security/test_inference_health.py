"""The inference service's ``/healthz`` tells probes and operators how many adapters are
loaded, never which: adapter names are organizations' fine-tuned models, listed only to a
caller holding the internal token (the Dorado API)."""

from __future__ import annotations

import pytest

from core.settings import load_settings
from core.storage.objects import LocalStore, upload_dir
from core.tenancy.secret import internal_token
from tests.conftest import MODEL_CACHE
from worker.inference.adapters import AdapterRef
from worker.inference.engine import GenerationParams, InferenceEngine
from worker.inference.server import create_app

BASE = "tiny-random-llama"
ADAPTER = "ftjob-acmesecretproject01"  # adapters are named by their job id


@pytest.fixture
def engine(tmp_path, monkeypatch) -> InferenceEngine:
    """The real engine with one organization's LoRA adapter attached by a real completion."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from worker.model_store import ensure_model

    monkeypatch.setenv("DORADO_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DORADO_SECRET_KEY", "health-test-secret")
    settings = load_settings().model_copy(update={"model_cache_dir": MODEL_CACHE})
    base_dir = ensure_model(settings, LocalStore(tmp_path / "models"), BASE)
    store = LocalStore(tmp_path / "objects")
    torch.manual_seed(0)
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(base_dir),
        LoraConfig(r=2, lora_alpha=4, target_modules="all-linear"),
    )
    model.save_pretrained(tmp_path / "adapter")
    upload_dir(store, "jobs/ftjob-acme/adapter", tmp_path / "adapter")
    engine = InferenceEngine(
        settings,
        store,
        adapter_cache_size=2,
        adapter_dir=tmp_path / "adapters",
        model_loader=lambda name: MODEL_CACHE / name,
    )
    question = [{"role": "user", "content": "Hello?"}]
    engine.complete(
        BASE,
        AdapterRef(name=ADAPTER, prefix="jobs/ftjob-acme/adapter"),
        GenerationParams(messages=question, max_tokens=2, temperature=0.0),
    )
    assert engine.loaded_adapters() == [ADAPTER]
    return engine


def test_health_counts_adapters_and_names_them_only_to_the_api(engine: InferenceEngine):
    settings = load_settings()
    client = create_app(settings, engine=engine).test_client()

    public = client.get("/healthz")
    assert public.status_code == 200
    assert public.get_json() == {"status": "ok", "adapters_loaded": 1}
    assert ADAPTER.encode() not in public.data
    wrong = client.get("/healthz", headers={"Authorization": "Bearer not-the-internal-token"})
    assert wrong.get_json() == {"status": "ok", "adapters_loaded": 1}

    internal = client.get(
        "/healthz", headers={"Authorization": f"Bearer {internal_token(settings)}"}
    )
    assert internal.get_json() == {"status": "ok", "adapters_loaded": 1, "adapters": [ADAPTER]}
