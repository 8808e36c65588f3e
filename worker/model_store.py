"""Base model weights on a worker: local cache <- object store <- built-in builder.

The object store is the fleet's model store (``models/<name>/``). A worker keeps a local copy
under ``DORADO_MODEL_CACHE``; a built-in model missing from the store is built once from its
package and uploaded, so other workers download it instead of rebuilding it.
"""

from __future__ import annotations

import logging
from pathlib import Path

from core.catalog import model_prefix
from core.settings import Settings
from core.storage import ObjectStore, download_dir, upload_dir
from worker.cache import COMPLETE_MARKER, fill_once

log = logging.getLogger(__name__)


class ModelUnavailable(RuntimeError):
    pass


def ensure_model(settings: Settings, store: ObjectStore, name: str) -> Path:
    """A local directory holding ``name`` in Hugging Face format (built/downloaded once)."""

    def fill(tmp: Path) -> None:
        if store.exists(f"{model_prefix(name)}/{COMPLETE_MARKER}"):
            log.info("downloading base model %s from the model store", name)
            download_dir(store, model_prefix(name), tmp)
        else:
            _build_and_publish(store, name, tmp)

    return fill_once(settings.model_cache_dir, name, fill)


def _build_and_publish(store: ObjectStore, name: str, tmp: Path) -> None:
    from worker.model_builders import BUILTIN_MODELS, build_builtin

    if name not in BUILTIN_MODELS:
        raise ModelUnavailable(f"base model '{name}' is not in the model store")
    log.info("building built-in model %s", name)
    build_builtin(name, tmp)
    keys = upload_dir(store, model_prefix(name), tmp)
    # Written last: other workers download only a model whose upload finished.
    marker = tmp / COMPLETE_MARKER
    marker.touch()
    store.put_file(f"{model_prefix(name)}/{COMPLETE_MARKER}", marker)
    log.info("uploaded %s (%d files) to the model store", name, len(keys))
