"""A job's adapter merged into its base weights: a plain Hugging Face model directory.

For serving engines that cannot load a DoRA adapter (vLLM, LoRAX): ``merge_and_unload`` folds
the low-rank update (and DoRA's magnitude) into the weights, so the result loads with
``AutoModelForCausalLM.from_pretrained`` alone. Built once per job and kept in the object store
at ``jobs/<job id>/merged.tar.gz``.

An adapter trained on a quantized base (QLoRA / QDoRA, ``worker.training.quantization``) learned
to correct the quantized weights: the base is quantized the same way, de-quantized into plain
linear layers, and only then merged, so the merged model computes what the adapter was trained
against (merging into the original weights would add back the quantization error it corrected).
"""

from __future__ import annotations

import logging
import shutil
import tarfile
import tempfile
import threading
from pathlib import Path
from typing import Any

from core.storage.objects import ObjectStore
from worker.inference.adapters import AdapterRef, ensure_adapter

log = logging.getLogger(__name__)

_locks: dict[str, threading.Lock] = {}
_locks_guard = threading.Lock()


def merged_key(job_id: str) -> str:
    """Where the merged model of ``job_id`` is kept in the object store."""
    return f"jobs/{job_id}/merged.tar.gz"


def merge_adapter(base_dir: Path, adapter_dir: Path, dest: Path) -> Path:
    """Write ``base + adapter`` merged into ``dest`` (config, safetensors, tokenizer files)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from worker.training.quantization import compute_dtype_of, dequantized_base, read_quantization

    # A fresh copy of the base: merging rewrites weights in place, and the serving copy must
    # stay the plain base model.
    quantized = read_quantization(adapter_dir)
    base: Any
    if quantized is None:
        base = AutoModelForCausalLM.from_pretrained(base_dir)
    else:
        log.info("de-quantizing the %s base before merging", quantized["method"])
        base = dequantized_base(
            base_dir, quantized["method"], compute_dtype_of(quantized), torch.float32
        )
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    dest.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(dest, safe_serialization=True)
    AutoTokenizer.from_pretrained(base_dir).save_pretrained(dest)
    for extra in ("chat_template.jinja", "generation_config.json"):
        if (base_dir / extra).is_file() and not (dest / extra).is_file():
            shutil.copyfile(base_dir / extra, dest / extra)
    return dest


def pack_dir(directory: Path, dest: Path) -> Path:
    """A .tar.gz with the directory's files at its top level."""
    # Level 1: float weights barely compress, and level 9 would triple the build time.
    with tarfile.open(dest, "w:gz", compresslevel=1) as tar:
        for path in sorted(p for p in directory.iterdir() if p.is_file()):
            tar.add(path, arcname=path.name)
    return dest


def ensure_merged(
    store: ObjectStore, base_dir: Path, adapter_cache: Path, ref: AdapterRef, job_id: str
) -> str:
    """The object-store key of the merged model of ``job_id``, building it the first time."""
    key = merged_key(job_id)
    with _locks_guard:
        lock = _locks.setdefault(job_id, threading.Lock())
    with lock:
        if store.exists(key):
            return key
        adapter_dir = ensure_adapter(store, adapter_cache, ref)
        with tempfile.TemporaryDirectory(prefix="dorado-merge-") as tmp:
            log.info("job %s: merging adapter into %s", job_id, base_dir.name)
            model_dir = merge_adapter(base_dir, adapter_dir, Path(tmp) / "model")
            archive = pack_dir(model_dir, Path(tmp) / "merged.tar.gz")
            store.put_file(key, archive)
            log.info(
                "job %s: merged model stored at %s (%d bytes)", job_id, key, archive.stat().st_size
            )
    return key
