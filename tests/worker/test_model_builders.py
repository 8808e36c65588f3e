"""Building the built-in base models into local HF directories."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from worker import model_builders
from worker.model_builders import BUILTIN_MODELS, build_builtin


def test_builtin_names() -> None:
    assert set(BUILTIN_MODELS) == {"smollm2-135m-instruct", "tiny-random-llama"}


def test_tiny_model_is_a_small_llama_with_smollm2_tokenizer(tiny_model_dir: Path) -> None:
    from transformers import AutoConfig, AutoTokenizer

    config = AutoConfig.from_pretrained(tiny_model_dir)
    assert config.model_type == "llama"
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (64, 2, 4)
    assert (config.num_key_value_heads, config.intermediate_size) == (2, 128)
    assert config.tie_word_embeddings and config.max_position_embeddings == 2048
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert config.vocab_size == len(tokenizer) == 49152
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True
    )
    assert text.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")


def test_tiny_build_is_deterministic(tiny_model_dir: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    state = torch.get_rng_state()
    build_builtin("tiny-random-llama", again)
    assert torch.equal(torch.get_rng_state(), state)  # the caller's RNG is left alone
    a = load_file(tiny_model_dir / "model.safetensors")
    b = load_file(again / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((tiny_model_dir / "config.json").read_text()) == json.loads(
        (again / "config.json").read_text()
    )


def test_unknown_name_is_a_clear_key_error(tmp_path: Path) -> None:
    with pytest.raises(KeyError) as info:
        build_builtin("gpt-5", tmp_path / "m")
    assert "unknown built-in model 'gpt-5'" in str(info.value)
    assert "tiny-random-llama" in str(info.value)
    assert not (tmp_path / "m").exists()


def test_failed_build_leaves_no_partial_model(monkeypatch, tmp_path: Path) -> None:
    def crashing_builder(dest: Path) -> None:
        dest.mkdir(parents=True, exist_ok=True)
        (dest / "config.json").write_text("{}")
        raise RuntimeError("disk full")

    monkeypatch.setitem(model_builders.BUILTIN_MODELS, "tiny-random-llama", crashing_builder)
    with pytest.raises(RuntimeError, match="disk full"):
        build_builtin("tiny-random-llama", tmp_path / "models" / "tiny")
    assert list((tmp_path / "models").iterdir()) == []


def test_existing_destination_is_refused(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    with pytest.raises(FileExistsError):
        build_builtin("tiny-random-llama", tmp_path / "m")


@pytest.mark.slow
def test_smollm2_conversion_keeps_the_pretrained_answer(smollm2_dir: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {
        p.name for p in smollm2_dir.iterdir()
    }
    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32).eval()
    enc = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    out = model.generate(**enc, max_new_tokens=12, do_sample=False)
    answer = tokenizer.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    assert answer == "The capital of France is Paris."
