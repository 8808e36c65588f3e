"""``dorado-admin models add owner/name``: a model from a Hugging Face Hub repository, read
through huggingface_hub from a local Hub cache (no machine here reaches a hub), with sharded
safetensors; its architecture is kept for the memory planner."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest

from core.catalog import hub
from core.catalog import registry as model_registry
from core.db.engine import session_scope
from core.db.models import Model
from core.errors import InvalidRequest
from core.storage.objects import open_store
from tests.admin.catalog_support import admin_json, prepare_platform, run_admin, tiny_model_dir

API_KEY = "dor-hub-test-key-0123456789ab"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def sharded_tiny(dest: Path) -> Path:
    """The tiny model saved in several safetensors shards, with its tokenizer files."""
    from transformers import AutoModelForCausalLM

    source = tiny_model_dir()
    AutoModelForCausalLM.from_pretrained(source).save_pretrained(dest, max_shard_size="4MB")
    for path in source.iterdir():
        if not path.name.startswith(".") and not (dest / path.name).exists():
            if path.suffix != ".safetensors":
                shutil.copy(path, dest / path.name)
    return dest


def hub_cache(cache: Path, repo_id: str, files: Path) -> Path:
    """``files`` laid out as huggingface_hub keeps a repository in its cache: blobs named by
    their hash, a snapshot per commit made of links to them, refs/main naming the commit."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    blobs, snapshot = repo / "blobs", repo / "snapshots" / COMMIT
    blobs.mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for path in sorted(files.iterdir()):
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        shutil.copy(path, blobs / digest)
        (snapshot / path.name).symlink_to(Path("../../blobs") / digest)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    return snapshot


@pytest.fixture
def hub_env(tmp_path, postgres_url, monkeypatch):
    env, settings = prepare_platform(tmp_path / "home", postgres_url, None, API_KEY, monkeypatch)
    cache = tmp_path / "hf-cache"
    hub_cache(cache, "acme/Tiny-Llama-Sharded", sharded_tiny(tmp_path / "sharded"))
    env = {**env, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "HF_TOKEN": "hf_unused"}
    return env, settings


def test_a_sharded_model_is_added_from_a_hub_repository(hub_env):
    env, settings = hub_env
    added = admin_json(env, "models", "add", "acme/Tiny-Llama-Sharded")
    assert added["id"] == "tiny-llama-sharded"
    assert added["source"] == f"hf:acme/Tiny-Llama-Sharded@{COMMIT}"
    keys = open_store(settings).list_keys("models/tiny-llama-sharded")
    shards = [k for k in keys if k.endswith(".safetensors")]
    assert len(shards) > 1 and any(k.endswith("model.safetensors.index.json") for k in keys)
    with session_scope(settings.database_url) as session:
        row = session.get(Model, "tiny-llama-sharded")
        assert row.config["model_type"] == "llama" and row.config["num_hidden_layers"] == 2

    # A revision and the explicit scheme work too; the name is still the repository's.
    again = admin_json(
        env, "models", "add", f"hf://acme/Tiny-Llama-Sharded@{COMMIT}", "--name", "pinned"
    )
    assert again["source"] == f"hf:acme/Tiny-Llama-Sharded@{COMMIT}"


def test_a_repository_missing_from_the_offline_cache_is_a_clear_error(hub_env):
    env, _settings = hub_env
    done = run_admin(env, "models", "add", "acme/not-cached")
    assert done.returncode == 1
    assert "acme/not-cached is not in the Hugging Face cache" in done.stderr


def test_hub_sources_are_told_from_local_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert hub.parse_hub_source("Qwen/Qwen2.5-7B-Instruct") == hub.HubSource(
        "Qwen/Qwen2.5-7B-Instruct"
    )
    assert hub.parse_hub_source("hf://org/m@v1.0").revision == "v1.0"
    (tmp_path / "models" / "mine").mkdir(parents=True)
    assert hub.parse_hub_source("models/mine") is None  # an existing directory wins
    assert hub.parse_hub_source("/abs/path") is None
    assert hub.parse_hub_source("a/b/c") is None
    with pytest.raises(InvalidRequest, match="use hf://owner/name"):
        hub.parse_hub_source("hf://not a repo")
    assert model_registry.default_name("Qwen/Qwen2.5-7B-Instruct@main") == "qwen2.5-7b-instruct"
    assert model_registry.describe_source("Qwen/Qwen2.5-7B-Instruct") == "hf"
