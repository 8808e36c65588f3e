"""The inference engine in-process: base + adapters (LRU), stop sequences, streaming, merge."""

from __future__ import annotations

import tarfile
from pathlib import Path

import pytest

from core.settings import load_settings
from core.storage.objects import LocalStore, upload_dir
from tests.conftest import MODEL_CACHE
from worker.inference.adapters import AdapterRef, AdapterUnavailable
from worker.inference.engine import Completion, GenerationParams, InferenceEngine
from worker.inference.merge import ensure_merged

BASE = "tiny-random-llama"
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def greedy(max_tokens: int = 12, **kw) -> GenerationParams:
    return GenerationParams(messages=QUESTION, max_tokens=max_tokens, temperature=0.0, **kw)


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory) -> Path:
    """The built-in tiny model, from the tests' model cache (built there if missing)."""
    from worker.model_store import ensure_model

    settings = load_settings().model_copy(update={"model_cache_dir": MODEL_CACHE})
    return ensure_model(settings, LocalStore(tmp_path_factory.mktemp("models")), BASE)


@pytest.fixture(scope="module")
def store(tmp_path_factory, base_dir: Path) -> LocalStore:
    """An object store holding three random (non-identity) DoRA/LoRA adapters of the base."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    root = tmp_path_factory.mktemp("objects")
    store = LocalStore(root)
    for i, dora in enumerate([True, False, True]):
        torch.manual_seed(100 + i)
        model = AutoModelForCausalLM.from_pretrained(base_dir)
        config = LoraConfig(
            r=4, lora_alpha=8, target_modules="all-linear", use_dora=dora, init_lora_weights=False
        )
        peft_model = get_peft_model(model, config)
        out = root.parent / f"adapter-{i}"
        peft_model.save_pretrained(out)
        upload_dir(store, f"jobs/ftjob-test{i}/adapter", out)
    return store


def ref(i: int) -> AdapterRef:
    return AdapterRef(name=f"ftjob-test{i}", prefix=f"jobs/ftjob-test{i}/adapter")


@pytest.fixture
def engine(tmp_path, store: LocalStore) -> InferenceEngine:
    return InferenceEngine(
        load_settings(),
        store,
        adapter_cache_size=2,
        adapter_dir=tmp_path / "adapters",
        model_loader=lambda name: MODEL_CACHE / name,
    )


def test_base_completion_counts_tokens_and_stops_at_length(engine: InferenceEngine) -> None:
    result = engine.complete(BASE, None, greedy(max_tokens=5))
    assert result.finish_reason == "length"
    assert result.completion_tokens == 5
    assert result.prompt_tokens > 5
    assert result.text


def test_adapters_switch_and_lru_evicts_with_delete_adapter(engine: InferenceEngine) -> None:
    base = engine.complete(BASE, None, greedy()).text
    first = [engine.complete(BASE, ref(i), greedy()).text for i in range(3)]
    assert all(text != base for text in first), (base, first)
    # Cache of 2: the first adapter was evicted from PEFT itself, not only from the LRU.
    assert engine.loaded_adapters() == ["ftjob-test1", "ftjob-test2"]
    peft_model = engine._bases[BASE].model
    assert set(peft_model.peft_config) == {"ftjob-test1", "ftjob-test2"}
    # Base requests switch adapters off; a reloaded adapter answers as before.
    assert engine.complete(BASE, None, greedy()).text == base
    assert engine.complete(BASE, ref(0), greedy()).text == first[0]
    assert engine.loaded_adapters() == ["ftjob-test2", "ftjob-test0"]
    assert engine.complete(BASE, ref(2), greedy()).text == first[2]
    assert engine.loaded_adapters() == ["ftjob-test0", "ftjob-test2"]


def test_stream_pieces_add_up_to_the_completion(engine: InferenceEngine) -> None:
    whole = engine.complete(BASE, ref(0), greedy(max_tokens=16))
    items = list(engine.stream(BASE, ref(0), greedy(max_tokens=16)))
    assert isinstance(items[-1], Completion)
    assert "".join(items[:-1]) == whole.text == items[-1].text
    assert items[-1].finish_reason == whole.finish_reason
    assert len(items) > 2  # more than one piece: it really streams


def test_stop_sequence_cuts_the_text_and_the_stream(engine: InferenceEngine) -> None:
    whole = engine.complete(BASE, ref(0), greedy(max_tokens=16)).text
    middle = whole.strip()[len(whole.strip()) // 2 :]
    stop = middle[:3]
    assert len(stop) == 3, whole
    expected = whole[: whole.find(stop)]
    params = greedy(max_tokens=16, stop=("never-there", stop))
    result = engine.complete(BASE, ref(0), params)
    assert (result.text, result.finish_reason) == (expected, "stop")
    items = list(engine.stream(BASE, ref(0), params))
    assert "".join(items[:-1]) == expected


def test_seeded_sampling_is_reproducible(engine: InferenceEngine) -> None:
    params = GenerationParams(messages=QUESTION, max_tokens=8, temperature=1.0, top_p=0.9, seed=7)
    assert engine.complete(BASE, None, params).text == engine.complete(BASE, None, params).text


def test_missing_adapter_is_reported(engine: InferenceEngine) -> None:
    with pytest.raises(AdapterUnavailable):
        engine.complete(
            BASE, AdapterRef(name="ftjob-gone", prefix="jobs/ftjob-gone/adapter"), greedy()
        )


def test_merged_model_matches_base_plus_adapter(
    engine: InferenceEngine, store: LocalStore, tmp_path: Path
) -> None:
    from transformers import AutoModelForCausalLM

    key = ensure_merged(store, MODEL_CACHE / BASE, tmp_path / "adapters", ref(0), "ftjob-test0")
    assert key == "jobs/ftjob-test0/merged.tar.gz"
    with tarfile.open(store.root / key) as tar:
        names = set(tar.getnames())
        tar.extractall(tmp_path / "merged", filter="data")
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= names
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    assert not hasattr(merged, "peft_config")
    plain = InferenceEngine(
        load_settings(),
        store,
        adapter_cache_size=1,
        adapter_dir=tmp_path / "unused",
        model_loader=lambda name: tmp_path / "merged",
    )
    assert (
        plain.complete("merged", None, greedy(max_tokens=16)).text
        == engine.complete(BASE, ref(0), greedy(max_tokens=16)).text
    )


def test_requests_taking_turns_in_slices_answer_as_if_alone(
    engine: InferenceEngine, store: LocalStore, tmp_path
) -> None:
    """Three organizations' requests interleave two tokens at a time, each with its own adapter
    (or none), KV cache and seeded sampling, and each answers exactly as it does alone in one
    slice; a stop sequence and a stream work across slices."""
    import threading
    from itertools import pairwise

    sliced = InferenceEngine(
        load_settings(),
        store,
        adapter_cache_size=1,  # the adapters also evict each other between turns
        adapter_dir=tmp_path / "sliced",
        model_loader=lambda name: MODEL_CACHE / name,
        slice_tokens=2,
    )
    sampled = GenerationParams(messages=QUESTION, max_tokens=12, temperature=1.0, seed=3)
    requests = {"org-a": (ref(0), greedy()), "org-b": (ref(1), greedy()), "org-c": (None, sampled)}
    alone = {
        org: engine.complete(BASE, adapter, params).text
        for org, (adapter, params) in requests.items()
    }
    turns: list[str | None] = []
    take_slice = sliced._slice

    def traced(base, adapter, run) -> None:
        turns.append(adapter.name if adapter else None)
        take_slice(base, adapter, run)

    sliced._slice = traced  # type: ignore[method-assign]
    together: dict[str, str] = {}

    def ask(org: str) -> None:
        adapter, params = requests[org]
        together[org] = sliced.complete(BASE, adapter, params, organization=org).text

    threads = [threading.Thread(target=ask, args=(org,)) for org in requests]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert together == alone
    # They did interleave: a request's turns are not all in one block.
    switches = sum(1 for before, after in pairwise(turns) if before != after)
    assert switches > len(requests), turns

    whole = alone["org-a"].strip()
    stop = whole[len(whole) // 2 :][:3]
    params = greedy(stop=(stop,))
    expected = engine.complete(BASE, ref(0), params)
    assert expected.finish_reason == "stop" and stop not in expected.text
    items = list(sliced.stream(BASE, ref(0), params))
    assert (items[-1].text, items[-1].finish_reason) == (expected.text, "stop")
    assert "".join(items[:-1]) == expected.text
