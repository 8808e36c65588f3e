"""``dorado-admin models add`` publishes a model to every organization, so it must publish
nothing else: only the model files of the directory, never a file a symbolic link leads to
outside it, and no "GGUF" that is four magic bytes and nothing more."""

from __future__ import annotations

import shutil
import struct
from pathlib import Path

import pytest

from core.catalog import registry as model_registry
from core.db.engine import session_scope
from core.errors import InvalidRequest
from core.storage.objects import open_store
from tests.admin.catalog_support import prepare_platform, run_admin, tiny_model_dir
from tests.security.helpers import small_gguf

API_KEY = "dor-model-sources-key-00000000"
SECRET = "aws_secret_access_key = do-not-publish-me"


@pytest.fixture
def platform(tmp_path, postgres_url, monkeypatch):
    """A database and a local object store; yields (env for dorado-admin, settings, store)."""
    env, settings = prepare_platform(tmp_path / "home", postgres_url, None, API_KEY, monkeypatch)
    return env, settings, open_store(settings)


def model_copy(dest: Path) -> Path:
    shutil.copytree(tiny_model_dir(), dest, ignore=shutil.ignore_patterns(".*"))
    return dest


def add(settings, store, name: str, source: Path):
    with session_scope(settings.database_url) as session:
        return model_registry.add_model(session, store, settings, name=name, source=str(source))


def stored_names(store, name: str) -> set[str]:
    return {k.rsplit("/", 1)[1] for k in store.list_keys(f"models/{name}")}


def test_a_link_leading_out_of_the_directory_is_refused(tmp_path, platform):
    env, settings, store = platform
    secret = tmp_path / "credentials"
    secret.write_text(SECRET)
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        source = model_copy(tmp_path / f"linked-{name.split('.')[0]}")
        (source / name).unlink(missing_ok=True)
        (source / name).symlink_to(secret)
        with pytest.raises(InvalidRequest, match=f"{name} is a symbolic link to .*outside"):
            add(settings, store, "linked", source)
        assert not store.list_keys("models/linked")

    done = run_admin(env, "models", "add", str(source), "--name", "linked")
    assert done.returncode == 1
    assert "is a symbolic link to" in done.stderr and "outside" in done.stderr
    assert SECRET not in done.stdout + done.stderr


def test_only_the_model_files_inside_the_directory_are_copied(tmp_path, platform):
    _env, settings, store = platform
    source = model_copy(tmp_path / "tidy")
    (source / "README.md").write_text("# notes")
    (source / "id_rsa").write_text("-----BEGIN OPENSSH PRIVATE KEY-----")
    (source / "extra").mkdir()
    (source / "extra" / "tokenizer.json").write_text("{}")
    (source / "unrelated-link").symlink_to(tmp_path / "nowhere")  # not a model file: ignored
    # A link that stays inside the directory is fine.
    (source / "generation_config.json").rename(source / "generation.json.real")
    (source / "generation_config.json").symlink_to("generation.json.real")
    add(settings, store, "tidy", source)
    expected = {p.name for p in tiny_model_dir().iterdir() if not p.name.startswith(".")}
    assert stored_names(store, "tidy") == expected | {".complete"}
    stored = b"".join(store.iter_chunks("models/tidy/generation_config.json"))
    assert stored == (source / "generation.json.real").read_bytes()


def test_a_hugging_face_cache_snapshot_is_accepted(tmp_path, platform):
    # models--org--name/snapshots/<revision>/<file> -> ../../blobs/<hash>, as huggingface_hub
    # lays out its cache.
    _env, settings, store = platform
    repo = tmp_path / "models--acme--tiny"
    snapshot, blobs = repo / "snapshots" / "0123abcd", repo / "blobs"
    snapshot.mkdir(parents=True)
    blobs.mkdir()
    for i, path in enumerate(sorted(model_copy(tmp_path / "plain").iterdir())):
        shutil.copy(path, blobs / f"blob{i}")
        (snapshot / path.name).symlink_to(Path("../../blobs") / f"blob{i}")
    add(settings, store, "from-cache", snapshot)
    expected = {p.name for p in tiny_model_dir().iterdir() if not p.name.startswith(".")}
    assert stored_names(store, "from-cache") == expected | {".complete"}


def test_a_gguf_is_parsed_before_it_is_registered(tmp_path, platform):
    env, settings, store = platform
    good = small_gguf(tmp_path / "good.gguf")
    whole = good.read_bytes()
    bad = {
        "magic-only": (b"GGUF" + b"\0" * 11, "not a complete GGUF file"),
        "version-1": (b"GGUF" + struct.pack("<IQQ", 1, 0, 0), "not a complete GGUF file"),
        "no-metadata": (b"GGUF" + struct.pack("<IQQ", 3, 0, 0), "no general.architecture"),
        "no-tensors": (small_gguf(tmp_path / "empty", tensors=0).read_bytes(), "no tensors"),
        "truncated": (whole[:-100], "not a complete GGUF file"),
        "zip": (b"PK\x03\x04zip", "not a GGUF file"),
    }
    for name, (content, message) in bad.items():
        path = tmp_path / f"{name}.gguf"
        path.write_bytes(content)
        with pytest.raises(InvalidRequest, match=message):
            add(settings, store, name, path)
        assert not store.list_keys(f"model-sources/{name}")

    done = run_admin(env, "models", "add", str(tmp_path / "magic-only.gguf"))
    assert done.returncode == 1 and "not a complete GGUF file" in done.stderr

    add(settings, store, "good", good)
    assert model_registry.stored_bytes(store, "good") == (len(whole), False)
