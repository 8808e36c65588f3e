"""A base model's small files (tokenizer, chat template, config) without its weights.

The validator tokenizes job files exactly as training will, which needs the tokenizer and the
model's config (for its context length), not gigabytes of weights. It reads the files from the
worker's local model cache when the whole model is already there, else downloads every stored
object of the model except weight files into ``<model cache>/.tokenizers/<name>`` (filled once,
like the model cache). A built-in model not yet in the object store is built and published
once through :func:`worker.model_store.ensure_model`, which every worker then downloads.
"""

from __future__ import annotations

import logging
from pathlib import Path

from core.catalog.lookup import model_prefix
from core.settings import Settings
from core.storage.objects import ObjectNotFound, ObjectStore
from worker.cache import COMPLETE_MARKER, fill_once, invalidate
from worker.model_store import ensure_model

log = logging.getLogger(__name__)

WEIGHT_SUFFIXES = (
    ".safetensors",
    ".bin",
    ".pt",
    ".pth",
    ".ckpt",
    ".gguf",
    ".h5",
    ".msgpack",
    ".onnx",
)
"""Stored files that hold weights (and their shard indexes end in ``.json``: kept, tiny)."""

TOKENIZER_CACHE = ".tokenizers"
"""Folder of the model cache that holds models' small files only."""


def is_weight_file(key: str) -> bool:
    """True for a weight file (safetensors, PyTorch, GGUF, ...), by its name."""
    return key.lower().endswith(WEIGHT_SUFFIXES)


def ensure_tokenizer_files(settings: Settings, store: ObjectStore, name: str) -> Path:
    """A local directory holding ``name``'s tokenizer, chat template and config.

    A cached copy whose ``.complete`` marker differs from the store's (the model was removed and
    registered again under the same name) is not used, as in ``worker.model_store``.
    """
    prefix = model_prefix(name)
    revision = _stored_revision(store, prefix)
    small_cache = settings.model_cache_dir / TOKENIZER_CACHE
    for directory in (settings.model_cache_dir / name, small_cache / name):
        marker = directory / COMPLETE_MARKER
        if marker.exists() and revision in (None, marker.read_text()):
            return directory
    if revision is None:
        return ensure_model(settings, store, name)  # builds and publishes a built-in once
    invalidate(small_cache, name)

    def fill(tmp: Path) -> None:
        keys = [k for k in store.list_keys(prefix) if not is_weight_file(k)]
        log.info("downloading the tokenizer and config of %s (%d files)", name, len(keys))
        for key in keys:
            store.download_file(key, tmp / key[len(prefix) + 1 :])

    return fill_once(small_cache, name, fill)


def _stored_revision(store: ObjectStore, prefix: str) -> str | None:
    """The content of the stored model's ``.complete`` marker; None when there is none (or the
    store cannot be read: a cached copy is then used as it is)."""
    try:
        return b"".join(store.iter_chunks(f"{prefix}/{COMPLETE_MARKER}")).decode()
    except ObjectNotFound:
        return None
    except Exception:
        log.warning(
            "could not read %s in the model store; using a cached copy", prefix, exc_info=True
        )
        return None
