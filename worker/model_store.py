"""Base model weights on a worker: local cache <- object store <- built-in builder or GGUF.

The object store is the fleet's model store (``models/<name>/``). A worker keeps a local copy
under ``DORADO_MODEL_CACHE``; a built-in model missing from the store is built once from its
package and uploaded, so other workers download it instead of rebuilding it. A model an
operator registered from a GGUF file (``dorado-admin models add x.gguf``) is converted the same
way, once, by the first worker that needs it.

The ``.complete`` marker of a registered model holds its revision: a cached copy whose marker
differs from the store's (the model was removed and registered again under the same name) is
replaced.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from core.catalog.lookup import model_prefix
from core.catalog.registry import gguf_source_key, new_revision
from core.settings import Settings
from core.storage.objects import ObjectNotFound, ObjectStore, download_dir, upload_dir
from worker.cache import COMPLETE_MARKER, fill_once, invalidate

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

    cached = settings.model_cache_dir / name / COMPLETE_MARKER
    if cached.exists() and _store_revision(store, name) not in (None, cached.read_text()):
        log.info("base model %s changed in the model store; replacing the cached copy", name)
        invalidate(settings.model_cache_dir, name)
    return fill_once(settings.model_cache_dir, name, fill)


def _store_revision(store: ObjectStore, name: str) -> str | None:
    """The store's marker content (empty for built-ins), or None when it has none or the
    store cannot be read now."""
    try:
        return b"".join(store.iter_chunks(f"{model_prefix(name)}/{COMPLETE_MARKER}")).decode()
    except ObjectNotFound:
        return None
    except Exception:  # a freshness check only: a store outage must not fail a cached model
        log.warning(
            "could not check base model %s in the model store; using the cached copy",
            name,
            exc_info=True,
        )
        return None


def _build_and_publish(store: ObjectStore, name: str, tmp: Path) -> None:
    from worker.model_builders import BUILTIN_MODELS, build_builtin

    if name in BUILTIN_MODELS:
        log.info("building built-in model %s", name)
        build_builtin(name, tmp)
        revision = ""
    elif store.exists(gguf_source_key(name)):
        _convert_registered_gguf(store, name, tmp)
        revision = new_revision()
    else:
        raise ModelUnavailable(f"base model '{name}' is not in the model store")
    keys = upload_dir(store, model_prefix(name), tmp)
    # Written last: other workers download only a model whose upload finished.
    marker = tmp / COMPLETE_MARKER
    marker.write_text(revision)
    store.put_file(f"{model_prefix(name)}/{COMPLETE_MARKER}", marker)
    log.info("uploaded %s (%d files) to the model store", name, len(keys))


def _convert_registered_gguf(store: ObjectStore, name: str, dest: Path) -> None:
    from worker.model_builders import convert_gguf

    with tempfile.TemporaryDirectory(prefix="dorado-gguf-") as tmp:
        gguf = Path(tmp) / "model.gguf"
        log.info("converting registered GGUF model %s to safetensors", name)
        store.download_file(gguf_source_key(name), gguf)
        try:
            convert_gguf(gguf, dest)
        except (ValueError, KeyError, OSError) as exc:
            raise ModelUnavailable(
                f"base model '{name}': its GGUF file could not be converted ({exc})"
            ) from exc
