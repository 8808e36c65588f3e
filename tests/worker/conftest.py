"""Fixtures for the training engine: a tiny seeded Llama built once per session, and the
real SmolLM2 kept in the tests' shared model cache (laid out like a worker's cache)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.conftest import MODEL_CACHE
from tests.worker.helpers import PIRATE
from worker.model_store import COMPLETE_MARKER


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The built-in tiny random Llama, built once per test session."""
    from worker.model_builders import build_builtin

    dest = tmp_path_factory.mktemp("models") / "tiny-random-llama"
    build_builtin("tiny-random-llama", dest)
    return dest


@pytest.fixture(scope="session")
def tokenizer(tiny_model_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """The real SmolLM2-135M-Instruct in HF format (built once, cached on disk)."""
    from worker.model_builders import build_builtin

    dest = MODEL_CACHE / "smollm2-135m-instruct"
    if not (dest / COMPLETE_MARKER).exists():
        if dest.exists():
            shutil.rmtree(dest)
        build_builtin("smollm2-135m-instruct", dest)
        (dest / COMPLETE_MARKER).touch()
    return dest


@pytest.fixture
def small_chat_file(tmp_path: Path) -> Path:
    """The first 12 pirate examples: enough to train a few steps in a second."""
    lines = PIRATE.read_text(encoding="utf-8").splitlines()[:12]
    path = tmp_path / "train.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
