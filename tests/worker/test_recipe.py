"""The training recipe on the tiny model: adapter files, reproducibility, stopping, loading."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.worker.helpers import RecordingReporter, assert_same_adapter, chat
from worker.training.data import collate, load_dataset, parse_line, tokenize_conversation
from worker.training.options import EngineOptions
from worker.training.recipe import forward_backward, lr_factor, resolve_max_seq_length, train
from worker.training.spec import AdapterSpec, TrainingStopped, TrainSpec

# A high rate so that the tiny random model visibly moves in a handful of steps.
BASE = TrainSpec(
    adapter=AdapterSpec(type="dora", r=4, alpha=8),
    n_epochs=2,
    batch_size=4,
    learning_rate=2e-2,
    seed=7,
    options=EngineOptions(device="cpu"),
)


def run(spec: TrainSpec, model_dir: Path, data: Path, out: Path, **reporter_kw):
    reporter = RecordingReporter(**reporter_kw)
    return train(spec, model_dir, data, out, reporter), reporter


@pytest.fixture(scope="module")
def dora_run(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    from tests.worker.helpers import PIRATE

    lines = PIRATE.read_text(encoding="utf-8").splitlines()[:12]
    data = tmp_path_factory.mktemp("data") / "train.jsonl"
    data.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path_factory.mktemp("dora") / "adapter"
    result, reporter = run(BASE, tiny_model_dir, data, out)
    return data, result, reporter


def test_dora_adapter_has_peft_layout_and_magnitude_vectors(dora_run) -> None:
    _, result, _ = dora_run
    assert sorted(p.name for p in result.adapter_dir.iterdir()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
    ]
    config = json.loads((result.adapter_dir / "adapter_config.json").read_text())
    assert config["use_dora"] is True
    assert config["peft_type"] == "LORA" and config["r"] == 4 and config["lora_alpha"] == 8
    keys = load_file(result.adapter_dir / "adapter_model.safetensors").keys()
    assert any("lora_magnitude_vector" in k for k in keys)
    assert any("lora_A" in k for k in keys) and any("lora_B" in k for k in keys)


def test_lora_adapter_has_no_magnitude_vectors(
    tiny_model_dir: Path, small_chat_file: Path, tmp_path: Path
) -> None:
    spec = replace(BASE, adapter=AdapterSpec(type="lora", r=4, alpha=8), n_epochs=1)
    result, _ = run(spec, tiny_model_dir, small_chat_file, tmp_path / "lora")
    config = json.loads((result.adapter_dir / "adapter_config.json").read_text())
    assert config["use_dora"] is False
    keys = load_file(result.adapter_dir / "adapter_model.safetensors").keys()
    assert keys and not any("lora_magnitude_vector" in k for k in keys)


def test_metrics_steps_and_tokens_are_reported(dora_run, tokenizer) -> None:
    data, result, reporter = dora_run
    assert result.steps == 2 * 3  # 12 examples / batch 4, 2 epochs
    assert [m[:2] for m in reporter.metrics_calls] == [(s, 6) for s in range(1, 7)]
    assert all(math.isfinite(loss) and 0 <= acc <= 1 for _, _, loss, acc in reporter.metrics_calls)
    assert result.final_train_loss == reporter.losses[-1]
    # Every real input token (prompt included), every epoch; padding excluded.
    dataset = load_dataset(data, tokenizer, max_seq_length=2048)
    assert result.trained_tokens == 2 * sum(len(ex) for ex in dataset.examples)
    assert reporter.losses[-1] < reporter.losses[0]


def test_same_seed_gives_identical_losses_and_weights(
    dora_run, tiny_model_dir: Path, tmp_path: Path
) -> None:
    data, first, first_reporter = dora_run
    again, reporter = run(BASE, tiny_model_dir, data, tmp_path / "again")
    assert reporter.metrics_calls == first_reporter.metrics_calls
    assert_same_adapter(first.adapter_dir, again.adapter_dir, rtol=0, atol=0)
    assert (first.adapter_dir / "adapter_config.json").read_bytes() == (
        again.adapter_dir / "adapter_config.json"
    ).read_bytes()

    other, other_reporter = run(replace(BASE, seed=8), tiny_model_dir, data, tmp_path / "other")
    assert other_reporter.losses != first_reporter.losses


def test_gradient_accumulation_matches_one_big_batch(tiny_model_dir: Path, tokenizer) -> None:
    from transformers import AutoModelForCausalLM

    from worker.training.adapters import attach_adapter

    # Replies of very different lengths: averaging per-micro-batch means would weight the
    # one-token reply like the long one; the step's loss must weight every token equally.
    replies = ["Arr!", "Arr! " + "Yo ho ho and a bottle of rum, " * 12, "Arr! Aye.", "Arr! No."]
    examples = [
        tokenize_conversation(tokenizer, parse_line(chat(f"Q{i}", r)))
        for i, r in enumerate(replies)
    ]
    torch.manual_seed(0)
    model = attach_adapter(
        AutoModelForCausalLM.from_pretrained(tiny_model_dir), AdapterSpec(type="lora", r=4)
    )

    def grads(micro_batches) -> tuple[float, list[torch.Tensor]]:
        model.zero_grad(set_to_none=True)
        stats = forward_backward(model, micro_batches, torch.device("cpu"))
        named = [p for n, p in model.named_parameters() if "lora_B" in n]
        return stats.loss, [p.grad.clone() for p in named]

    whole_loss, whole = grads([collate(examples, pad_token_id=2)])
    split_loss, split = grads([collate([ex], pad_token_id=2) for ex in examples])
    assert split_loss == pytest.approx(whole_loss, rel=1e-5)
    assert all(g.abs().sum() > 0 for g in whole)
    for a, b in zip(whole, split, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_head_on_loss_positions_only_gives_the_full_forwards_loss_and_gradients(
    tiny_model_dir: Path, tokenizer
) -> None:
    from transformers import AutoModelForCausalLM

    from worker.training.adapters import attach_adapter
    from worker.training.logits import split_head

    replies = ["Arr!", "Arr! " + "Yo ho ho, " * 9, "Arr! Aye, the sea be calm today."]
    examples = [
        tokenize_conversation(tokenizer, parse_line(chat(f"Question {i}?", r)))
        for i, r in enumerate(replies)
    ]
    torch.manual_seed(0)
    model = attach_adapter(
        AutoModelForCausalLM.from_pretrained(tiny_model_dir), AdapterSpec(type="dora", r=4)
    )
    # Move B off zero, so that every adapter parameter gets a gradient.
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.02)
    assert split_head(model) is not None  # the tiny Llama takes the short path

    def run(positions_only: bool):
        model.zero_grad(set_to_none=True)
        batch = collate(examples, pad_token_id=2)  # padded rows: padding must stay out
        stats = forward_backward(
            model, [batch], torch.device("cpu"), loss_positions_only=positions_only
        )
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        return stats, grads

    short, short_grads = run(True)
    full, full_grads = run(False)
    assert short.loss == pytest.approx(full.loss, rel=1e-6)
    assert short.accuracy == full.accuracy
    assert short_grads.keys() == full_grads.keys() and short_grads
    for name, grad in full_grads.items():
        assert grad.abs().sum() > 0, name
        torch.testing.assert_close(short_grads[name], grad, rtol=1e-4, atol=1e-7)


def test_should_stop_raises_before_the_next_step(
    tiny_model_dir: Path, small_chat_file: Path, tmp_path: Path
) -> None:
    out = tmp_path / "stopped"
    reporter = RecordingReporter(stop_after=2)
    with pytest.raises(TrainingStopped):
        train(BASE, tiny_model_dir, small_chat_file, out, reporter)
    assert [m[0] for m in reporter.metrics_calls] == [1, 2]
    assert not (out / "adapter_model.safetensors").exists()


def test_saved_adapter_loads_with_peft_and_changes_outputs(dora_run, tiny_model_dir) -> None:
    from peft import PeftModel, get_peft_model_state_dict
    from transformers import AutoModelForCausalLM

    _, result, _ = dora_run
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    ids = torch.tensor([[1, 4093, 198, 26843, 2, 198, 1, 520, 9531, 198]])
    with torch.no_grad():
        before = base(input_ids=ids).logits
    tuned = PeftModel.from_pretrained(base, result.adapter_dir).eval()
    saved = load_file(result.adapter_dir / "adapter_model.safetensors")
    loaded = get_peft_model_state_dict(tuned)
    assert loaded.keys() == saved.keys()
    assert all(torch.equal(loaded[k], saved[k]) for k in saved)
    with torch.no_grad():
        after = tuned(input_ids=ids).logits
    assert not torch.allclose(before, after, atol=1e-4)


def test_truncation_is_reported(tiny_model_dir: Path, small_chat_file: Path, tmp_path) -> None:
    spec = replace(BASE, n_epochs=1, max_seq_length=45)
    _, reporter = run(spec, tiny_model_dir, small_chat_file, tmp_path / "t")
    warnings = [text for level, text in reporter.messages if level == "warn"]
    assert any(text.startswith("Truncated ") and "45 tokens" in text for text in warnings)


def test_lr_schedule_warms_up_then_decays() -> None:
    linear = [lr_factor(s, 10, 2) for s in range(10)]
    assert linear[0] < linear[1] < linear[2] == 1.0
    assert linear[2:] == sorted(linear[2:], reverse=True) and linear[-1] > 0
    cosine = [lr_factor(s, 10, 0, "cosine") for s in range(10)]
    assert cosine[0] == 1.0 and cosine[-1] < 0.05
    assert lr_factor(9, 10, 0, "constant") == 1.0
    with pytest.raises(ValueError):
        lr_factor(0, 10, 0, "exponential")


def test_max_seq_length_defaults_to_model_limit_capped_at_2048() -> None:
    class Cfg:
        max_position_embeddings = 8192

    assert resolve_max_seq_length(BASE, Cfg()) == 2048
    Cfg.max_position_embeddings = 512
    assert resolve_max_seq_length(BASE, Cfg()) == 512
    assert resolve_max_seq_length(replace(BASE, max_seq_length=300), Cfg()) == 300


def test_metrics_without_validation_file_carry_no_valid_values(dora_run) -> None:
    _, _, reporter = dora_run
    for m in reporter.metrics_extra:
        assert m["valid_loss"] is None and m["full_valid_loss"] is None
        assert m["valid_mean_token_accuracy"] is None
        assert m["full_valid_mean_token_accuracy"] is None
        assert m["tokens_per_second"] > 0


def test_gradient_checkpointing_trains_the_same(
    dora_run, tiny_model_dir: Path, tmp_path: Path
) -> None:
    data, _, first_reporter = dora_run
    spec = replace(BASE, gradient_checkpointing=True)
    result, reporter = run(spec, tiny_model_dir, data, tmp_path / "gc")
    assert result.steps == 6
    assert reporter.losses == pytest.approx(first_reporter.losses, rel=1e-5)


def test_the_optimizer_uses_the_spec_rate_as_given() -> None:
    from worker.training.recipe import build_optimizer

    spec = replace(BASE, learning_rate=3e-4)
    model = torch.nn.Linear(2, 2)
    assert build_optimizer(model, spec).param_groups[0]["lr"] == 3e-4


def test_evaluate_is_token_weighted_and_restores_train_mode(
    tiny_model_dir: Path, tokenizer
) -> None:
    from transformers import AutoModelForCausalLM

    from worker.training.recipe import evaluate

    replies = ["Arr!", "Arr! " + "Yo ho ho, " * 20, "Arr! Aye.", "Nay."]
    examples = [
        tokenize_conversation(tokenizer, parse_line(chat(f"Q{i}", r)))
        for i, r in enumerate(replies)
    ]
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).train()
    cpu = torch.device("cpu")
    whole = evaluate(model, examples, 2, cpu, micro_batch_size=8)
    one_by_one = evaluate(model, examples, 2, cpu, micro_batch_size=1)
    assert model.training
    assert (
        whole.n_loss_tokens
        == one_by_one.n_loss_tokens
        == sum(ex.n_predicted_tokens for ex in examples)
    )
    assert whole.loss == pytest.approx(one_by_one.loss, rel=1e-5)
    assert whole.accuracy == pytest.approx(one_by_one.accuracy)
