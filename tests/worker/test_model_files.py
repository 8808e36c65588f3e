"""The validator's view of a base model: tokenizer, chat template and config, never weights."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.catalog.lookup import model_prefix
from core.settings import load_settings
from core.storage.objects import open_store, upload_dir
from worker.cache import COMPLETE_MARKER
from worker.model_files import ensure_tokenizer_files, is_weight_file


@pytest.fixture
def published(tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A settings/store pair whose object store holds the tiny model, as workers publish it."""
    monkeypatch.setenv("DORADO_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DORADO_MODEL_CACHE", str(tmp_path / "validator-cache"))
    monkeypatch.setenv("DORADO_STORAGE_URL", f"file://{tmp_path / 'objects'}")
    settings = load_settings()
    store = open_store(settings)
    prefix = model_prefix("tiny-random-llama")
    upload_dir(store, prefix, tiny_model_dir)
    marker = tmp_path / COMPLETE_MARKER
    marker.touch()
    store.put_file(f"{prefix}/{COMPLETE_MARKER}", marker)
    return settings, store


def test_only_the_small_files_are_fetched(published, tiny_model_dir: Path) -> None:
    from transformers import AutoConfig, AutoTokenizer

    settings, store = published
    local = ensure_tokenizer_files(settings, store, "tiny-random-llama")
    names = {p.name for p in local.iterdir()}
    assert {"tokenizer.json", "tokenizer_config.json", "config.json"} <= names
    assert "model.safetensors" not in names and not any(is_weight_file(n) for n in names)
    assert (tiny_model_dir / "model.safetensors").exists()  # it was there to skip
    # Tokenizes and templates exactly like the full model directory.
    ours, full = AutoTokenizer.from_pretrained(local), AutoTokenizer.from_pretrained(tiny_model_dir)
    chat = [{"role": "user", "content": "Ahoy?"}, {"role": "assistant", "content": "Arr!"}]
    assert ours.apply_chat_template(chat, tokenize=False) == full.apply_chat_template(
        chat, tokenize=False
    )
    assert ours("Arr, matey")["input_ids"] == full("Arr, matey")["input_ids"]
    assert AutoConfig.from_pretrained(local).max_position_embeddings == 2048

    # The model registered again under the same name (a new revision in its marker): the
    # cached files are fetched again.
    (local / "tokenizer.json").write_text("stale")
    marker = local.parent / "new-marker"
    marker.write_text("revision-2")
    store.put_file(f"{model_prefix('tiny-random-llama')}/{COMPLETE_MARKER}", marker)
    assert ensure_tokenizer_files(settings, store, "tiny-random-llama") == local
    assert (local / COMPLETE_MARKER).read_text() == "revision-2"
    assert (local / "tokenizer.json").read_text() != "stale"

    # Filled once: later calls read the local copy, even with the store gone.
    for key in store.list_keys(model_prefix("tiny-random-llama")):
        store.delete(key)
    assert ensure_tokenizer_files(settings, store, "tiny-random-llama") == local


def test_a_model_already_in_the_cache_is_used_as_it_is(published) -> None:
    settings, store = published
    full = settings.model_cache_dir / "tiny-random-llama"
    full.mkdir(parents=True)
    (full / COMPLETE_MARKER).touch()
    assert ensure_tokenizer_files(settings, store, "tiny-random-llama") == full


def test_weight_files_are_recognised() -> None:
    assert is_weight_file("models/x/model-00001-of-00002.safetensors")
    assert is_weight_file("models/x/pytorch_model.bin") and is_weight_file("m/x.GGUF")
    assert not is_weight_file("models/x/model.safetensors.index.json")
    assert not is_weight_file("models/x/tokenizer.json")
