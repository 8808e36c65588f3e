"""The engine's DPO: TRL's loss as the oracle, pair batching, metrics, checkpoints and resume."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from tests.worker.helpers import (
    PIRATE,
    PLAIN,
    RecordingReporter,
    assert_same_adapter,
    preference_rows,
    write_jsonl,
)
from worker.training.data import IGNORE_INDEX, Batch, DatasetFormatError
from worker.training.dpo import (
    DPO_METRIC_KEYS,
    PairBatch,
    dpo_forward_backward,
    load_preference_dataset,
    pair_micro_batches,
    reference_policy,
    reference_table,
    sequence_logps,
)
from worker.training.logits import split_head
from worker.training.options import EngineOptions
from worker.training.recipe import train
from worker.training.spec import AdapterSpec, DpoSpec, TrainingPaused, TrainSpec

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def pref_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("pref")
    return (
        write_jsonl(root / "train.jsonl", preference_rows(12)),
        write_jsonl(root / "valid.jsonl", preference_rows(6, start=12)),
    )


SPEC = TrainSpec(
    adapter=AdapterSpec(type="dora", r=4, alpha=8, dropout=0.1),
    n_epochs=2,
    batch_size=4,
    learning_rate=2e-2,
    seed=5,
    checkpoint_every_n_steps=2,
    eval_every_n_steps=2,
    options=EngineOptions(device="cpu", valid_sample_size=3, micro_batch_size=4),
    dpo=DpoSpec(beta=0.1),
)
TOTAL = 6  # 12 pairs / batch 4, 2 epochs


@pytest.fixture(scope="module")
def dpo_run(tiny_model_dir: Path, pref_files, tmp_path_factory: pytest.TempPathFactory):
    train_file, valid_file = pref_files
    root = tmp_path_factory.mktemp("dpo")
    reporter = RecordingReporter(checkpoint_root=root / "ckpts")
    result = train(
        SPEC, tiny_model_dir, train_file, root / "adapter", reporter, validation_file=valid_file
    )
    return result, reporter


# --- the loss: TRL's DPOTrainer as the oracle -------------------------------------------------


@pytest.mark.parametrize("adapter_type", ["lora", "dora"])
def test_engine_dpo_loss_equals_trls_on_one_batch(
    tiny_model_dir: Path, tmp_path: Path, adapter_type: str
) -> None:
    pytest.importorskip("trl")
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    from worker.training.adapters import attach_adapter
    from worker.training.fast_dora import enable_fast_dora
    from worker.training.fused_adapter import enable_fused_adapters

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    model = attach_adapter(base, AdapterSpec(type=adapter_type, r=4, alpha=8))
    rows = [
        {
            "prompt": r["input"]["messages"],
            "chosen": r["preferred_output"],
            "rejected": r["non_preferred_output"],
        }
        for r in preference_rows(4)
    ]
    args = DPOConfig(
        output_dir=str(tmp_path / "trl"),
        per_device_train_batch_size=4,
        beta=0.3,
        report_to=[],
        use_cpu=True,
        max_length=None,
    )
    trainer = DPOTrainer(
        model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer
    )
    # TRL keeps the adapter as given under "ref" (here the fresh, identity adapter: the base
    # model); then the trained adapter moves away from it, so that policy != reference.
    policy = trainer.model
    torch.manual_seed(0)
    with torch.no_grad():
        for name, param in policy.named_parameters():
            if ".default" in name and ("lora_B" in name or "magnitude" in name):
                param.add_(torch.randn_like(param) * 0.2)
    if adapter_type == "dora":
        enable_fast_dora(policy)
    enable_fused_adapters(policy)
    inputs = next(iter(trainer.get_train_dataloader()))
    expected = float(trainer.compute_loss(policy, inputs))
    assert abs(expected - math.log(2)) > 1e-3  # the comparison is not of two trivial values

    labels = inputs["input_ids"].masked_fill(inputs["completion_mask"] == 0, IGNORE_INDEX)
    batch = Batch(
        inputs["input_ids"],
        inputs["attention_mask"],
        labels,
        int(inputs["attention_mask"].sum()),
        int(inputs["completion_mask"].sum()),
    )
    got = dpo_forward_backward(policy, [PairBatch(batch, (0, 1, 2, 3))], CPU, beta=0.3, n_pairs=4)
    assert got.loss == pytest.approx(expected, abs=1e-5)


def test_reference_is_the_model_with_its_adapter_off(tiny_model_dir: Path, tokenizer) -> None:
    from transformers import AutoModelForCausalLM

    from worker.training.adapters import attach_adapter

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    pairs = _pairs(tokenizer, 2)
    batch = pair_micro_batches(pairs, [0, 1], pad_token_id=0)[0].batch
    before = sequence_logps(base, batch, CPU, None)
    model = attach_adapter(base, AdapterSpec(type="lora", r=4, alpha=8))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.3)
    with reference_policy(model):
        reference = sequence_logps(model, batch, CPU, None)
        assert not torch.is_grad_enabled()
    torch.testing.assert_close(reference, before)
    assert not torch.allclose(sequence_logps(model, batch, CPU, None), before)


# --- pairs and their micro-batches ----------------------------------------------------------


def _pairs(tokenizer, n: int, tmp: Path | None = None):
    import tempfile

    root = tmp or Path(tempfile.mkdtemp())
    path = write_jsonl(root / "pairs.jsonl", preference_rows(n))
    return load_preference_dataset(path, tokenizer, 512).examples


def test_pairs_are_labelled_on_their_replies_only(tokenizer) -> None:
    pair = _pairs(tokenizer, 1)[0]
    chosen = tokenizer.decode([t for t in pair.chosen.labels if t != IGNORE_INDEX])
    rejected = tokenizer.decode([t for t in pair.rejected.labels if t != IGNORE_INDEX])
    assert chosen.startswith("Arr! The capital of Spain be Madrid") and "user" not in chosen
    assert rejected.startswith(PLAIN)
    # The same prompt precedes both replies.
    first = pair.chosen.labels.index(next(t for t in pair.chosen.labels if t != IGNORE_INDEX))
    assert pair.chosen.input_ids[:first] == pair.rejected.input_ids[:first]


def test_micro_batches_keep_pairs_together_within_the_limits(tokenizer) -> None:
    pairs = _pairs(tokenizer, 8)
    indices = [5, 0, 3, 7, 1]
    micro = pair_micro_batches(pairs, indices, pad_token_id=0, micro_batch_size=4)
    assert all(mb.batch.input_ids.shape[0] == 2 * len(mb.pairs) <= 4 for mb in micro)
    assert sorted(i for mb in micro for i in mb.pairs) == sorted(indices)
    for mb in micro:
        n = len(mb.pairs)
        for row, index in enumerate(mb.pairs):
            chosen = mb.batch.input_ids[row][mb.batch.attention_mask[row] == 1].tolist()
            rejected = mb.batch.input_ids[n + row][mb.batch.attention_mask[n + row] == 1]
            assert chosen == list(pairs[index].chosen.input_ids)
            assert rejected.tolist() == list(pairs[index].rejected.input_ids)


def test_accumulated_micro_batches_give_the_one_batch_gradient(
    tiny_model_dir: Path, tokenizer
) -> None:
    from transformers import AutoModelForCausalLM

    from worker.training.adapters import attach_adapter

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    model = attach_adapter(base, AdapterSpec(type="dora", r=4, alpha=8))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.2)
    pairs = _pairs(tokenizer, 6)
    grads = []
    for size in (12, 2):
        model.zero_grad(set_to_none=True)
        micro = pair_micro_batches(pairs, range(6), 0, micro_batch_size=size)
        assert len(micro) == (1 if size == 12 else 6)
        stats = dpo_forward_backward(model, micro, CPU, 0.1, 6, loss_positions_only=True)
        grads.append((stats, [p.grad.clone() for p in model.parameters() if p.grad is not None]))
    (one, g1), (many, g2) = grads
    # The reference computed once up front gives the same step as computing it per step.
    model.zero_grad(set_to_none=True)
    table = reference_table(model, pairs, 0, CPU)
    micro = pair_micro_batches(pairs, range(6), 0, micro_batch_size=4)
    cached = dpo_forward_backward(model, micro, CPU, 0.1, 6, reference=table)
    assert cached.loss == pytest.approx(one.loss, rel=1e-5)
    g3 = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    for a, b in zip(g1, g3, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    assert many.loss == pytest.approx(one.loss, rel=1e-5)
    assert many.reward_margin == pytest.approx(one.reward_margin, rel=1e-4, abs=1e-6)
    for a, b in zip(g1, g2, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    assert split_head(model) is not None  # the loss-positions-only head path was used


def test_a_chat_file_is_not_a_preference_file(tmp_path: Path, tokenizer) -> None:
    path = write_jsonl(
        tmp_path / "chat.jsonl",
        [{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}],
    )
    with pytest.raises(DatasetFormatError, match="line 1: expected a preference example"):
        load_preference_dataset(path, tokenizer, 512)


def test_validator_counts_pairs_and_keeps_its_limits(tmp_path: Path, tokenizer, pref_files) -> None:
    """worker.validation.file_stats on a DPO job: pairs counted with both replies' tokens,
    a chat file refused, the upload caps re-checked and the time budget kept."""
    from core.storage.datasets import DatasetLimits
    from worker.validation import ValidationTimeout, file_stats

    train_file, _ = pref_files
    stats = file_stats(train_file, tokenizer, 512, method="dpo")
    assert stats["examples"] == 12 and stats["truncated_examples"] == 0
    assert 0 < stats["trainable_tokens"] < stats["tokens"]
    with pytest.raises(ValueError, match="the file holds preference"):
        file_stats(train_file, tokenizer, 512)  # a supervised job
    with pytest.raises(ValueError, match="DORADO_MAX_LINE_BYTES"):
        file_stats(train_file, tokenizer, 512, limits=DatasetLimits(64, 1000), method="dpo")
    with pytest.raises(ValidationTimeout):
        file_stats(train_file, tokenizer, 512, deadline=0.0, budget=1.0, method="dpo")
    chat = write_jsonl(tmp_path / "chat.jsonl", [json.loads(line) for line in _pirate(12)])
    with pytest.raises(ValueError, match="a dpo job needs preference"):
        file_stats(chat, tokenizer, 512, method="dpo")


def _pirate(n: int) -> list[str]:
    return PIRATE.read_text(encoding="utf-8").splitlines()[:n]


# --- the recipe on DPO: metrics, checkpoints, resume ----------------------------------------


def test_dpo_run_reports_the_dpo_quantities(dpo_run) -> None:
    result, reporter = dpo_run
    assert result.steps == TOTAL
    assert [m[0] for m in reporter.metrics_calls] == list(range(1, TOTAL + 1))
    first = reporter.metrics_calls[0]
    # The adapter starts as the identity: policy == reference, so the first loss is log 2.
    assert first[2] == pytest.approx(math.log(2), abs=1e-4)
    extras = [e["extra"] for e in reporter.metrics_extra]
    for key in DPO_METRIC_KEYS:
        assert all(e[f"train_{key}"] is not None for e in extras)
    last = extras[-1]
    assert last["train_reward_margin"] == pytest.approx(
        last["train_chosen_reward"] - last["train_rejected_reward"], abs=1e-6
    )
    assert 0.0 <= last["train_preference_accuracy"] <= 1.0
    # Sampled validation every 2 steps, full validation at each epoch end.
    valid_steps = [e["step"] for e in reporter.metrics_extra if e["valid_loss"] is not None]
    assert valid_steps == [2, 4, 6]
    assert all(extras[s - 1]["valid_reward_margin"] is not None for s in valid_steps)
    full = [e["step"] for e in reporter.metrics_extra if e["full_valid_loss"] is not None]
    assert full == [3, 6] and extras[5]["full_valid_preference_accuracy"] is not None
    assert any("DPO" in text for _, text in reporter.messages)


def test_dpo_learns_the_preference(dpo_run) -> None:
    _, reporter = dpo_run
    margins = [e["extra"]["train_reward_margin"] for e in reporter.metrics_extra]
    assert margins[0] == pytest.approx(0.0, abs=1e-4)
    assert margins[-1] > 0.05
    assert reporter.losses[-1] < math.log(2)


def test_dpo_checkpoints_carry_the_dpo_metrics(dpo_run) -> None:
    _, reporter = dpo_run
    got = [(c.step, c.reason) for c in reporter.checkpoints]
    assert got == [(2, "interval"), (3, "epoch_end"), (4, "interval"), (6, "epoch_end")]
    assert reporter.checkpoints[-1].metrics["train_reward_margin"] is not None


@pytest.mark.parametrize("resume_index", [0, 1])
def test_dpo_resume_ends_like_the_uninterrupted_run(
    dpo_run, pref_files, tiny_model_dir: Path, tmp_path: Path, resume_index: int
) -> None:
    result, reporter = dpo_run
    train_file, valid_file = pref_files
    done = reporter.checkpoints[resume_index].step
    resumed = RecordingReporter()
    again = train(
        SPEC,
        tiny_model_dir,
        train_file,
        tmp_path / "adapter",
        resumed,
        validation_file=valid_file,
        resume_from=reporter.checkpoint_copies[resume_index],
    )
    assert ("info", f"Resumed from step {done}") in resumed.messages
    assert again.steps == result.steps and again.trained_tokens == result.trained_tokens
    for got, want in zip(resumed.metrics_calls, reporter.metrics_calls[done:], strict=True):
        assert got[:2] == want[:2]
        assert got[2:] == pytest.approx(want[2:], rel=1e-5, abs=1e-6)
    assert_same_adapter(again.adapter_dir, result.adapter_dir, rtol=1e-5, atol=1e-6)


def test_dpo_pause_checkpoints_then_resumes(
    pref_files, tiny_model_dir: Path, tmp_path: Path
) -> None:
    train_file, _ = pref_files
    spec = replace(SPEC, n_epochs=1, checkpoint_every_n_steps=None)
    paused = RecordingReporter(pause_after=1, checkpoint_root=tmp_path / "ckpts")
    with pytest.raises(TrainingPaused):
        train(spec, tiny_model_dir, train_file, tmp_path / "a", paused)
    assert [(c.step, c.reason) for c in paused.checkpoints] == [(1, "pause")]
    resumed = RecordingReporter()
    result = train(
        spec,
        tiny_model_dir,
        train_file,
        tmp_path / "b",
        resumed,
        resume_from=paused.checkpoint_copies[-1],
    )
    assert result.steps == 3 and [m[0] for m in resumed.metrics_calls] == [2, 3]


def test_a_supervised_checkpoint_does_not_resume_a_dpo_run(
    pref_files, tiny_model_dir: Path, tmp_path: Path, dpo_run
) -> None:
    from worker.training.checkpoints import CheckpointMismatch

    _, reporter = dpo_run
    train_file, valid_file = pref_files
    with pytest.raises(CheckpointMismatch):
        train(
            replace(SPEC, dpo=DpoSpec(beta=0.5)),
            tiny_model_dir,
            train_file,
            tmp_path / "adapter",
            RecordingReporter(),
            validation_file=valid_file,
            resume_from=reporter.checkpoint_copies[0],
        )


# --- continued fine-tuning: the adapter starts from a parent's --------------------------------


@pytest.fixture(scope="module")
def sft_parent(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A supervised DoRA adapter (the SPEC's type and rank): the parent of ``ft:`` DPO runs."""
    root = tmp_path_factory.mktemp("sft")
    chat = root / "chat.jsonl"
    chat.write_text("\n".join(_pirate(12)) + "\n", encoding="utf-8")
    sft = replace(SPEC, dpo=None, n_epochs=1, checkpoint_every_n_steps=None, learning_rate=5e-2)
    return train(sft, tiny_model_dir, chat, root / "adapter", RecordingReporter()).adapter_dir


def _logps_of(model: torch.nn.Module, pairs) -> torch.Tensor:
    """``[n_pairs, 2]`` summed reply log-probs, one pair per batch (no padding involved)."""
    rows = []
    with torch.no_grad():
        for i in range(len(pairs)):
            batch = pair_micro_batches(pairs, [i], pad_token_id=0)[0].batch
            rows.append(sequence_logps(model, batch, CPU, None))
    return torch.stack(rows)


def test_a_continued_run_takes_its_parent_as_the_reference(
    sft_parent: Path, pref_files, tiny_model_dir: Path, tokenizer
) -> None:
    """An ``ft:`` DPO run's reference is the parent adapter's model (as PEFT loads it), for
    the training and the validation pairs; at step 0 rewards and margin are 0, loss log 2."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from worker.training.parallel import SINGLE
    from worker.training.recipe import _Run

    train_file, valid_file = pref_files
    adapter = replace(SPEC.adapter, dropout=0.0)  # train mode then computes what eval does
    spec = replace(
        SPEC,
        adapter=adapter,
        n_epochs=1,
        checkpoint_every_n_steps=None,
        init_adapter_dir=sft_parent,
    )
    reporter = RecordingReporter()
    run = _Run(spec, reporter, CPU, torch.float32, SINGLE)
    run.setup(tiny_model_dir, train_file, valid_file, None)
    assert run.reference is not None and run.valid_reference is not None

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    parent = PeftModel.from_pretrained(base, sft_parent).eval()
    train_pairs = load_preference_dataset(train_file, tokenizer, 512).examples
    valid_pairs = load_preference_dataset(valid_file, tokenizer, 512).examples
    want_train, want_valid = _logps_of(parent, train_pairs), _logps_of(parent, valid_pairs)
    torch.testing.assert_close(run.reference, want_train, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(run.valid_reference, want_valid, rtol=1e-5, atol=1e-4)
    with parent.disable_adapter():  # the parent is not the base model: the check has teeth
        assert not torch.allclose(_logps_of(parent, valid_pairs), want_valid, atol=1e-2)

    at_start = run._evaluate(run.valid, range(len(run.valid)))  # validation at step 0
    assert at_start.loss == pytest.approx(math.log(2), abs=1e-5)
    for key in ("chosen_reward", "rejected_reward", "reward_margin"):
        assert at_start.extra[key] == pytest.approx(0.0, abs=1e-5)
    run.train()
    first = reporter.metrics_extra[0]["extra"]  # step 1's figures: the starting weights'
    for key in ("train_chosen_reward", "train_rejected_reward", "train_reward_margin"):
        assert first[key] == pytest.approx(0.0, abs=1e-5)
    assert reporter.losses[0] == pytest.approx(math.log(2), abs=1e-5)
    assert reporter.metrics_extra[-1]["extra"]["train_reward_margin"] > 0.01  # and it learns


def test_a_parent_that_does_not_fit_is_refused(
    sft_parent: Path, pref_files, tiny_model_dir: Path, tmp_path: Path
) -> None:
    train_file, _ = pref_files
    wrong_rank = replace(
        SPEC, adapter=replace(SPEC.adapter, r=8), n_epochs=1, init_adapter_dir=sft_parent
    )
    with pytest.raises(ValueError, match="parent adapter does not fit"):
        train(wrong_rank, tiny_model_dir, train_file, tmp_path / "c", RecordingReporter())


@pytest.fixture(scope="module")
def ft_dpo_run(
    sft_parent: Path, pref_files, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
):
    train_file, valid_file = pref_files
    root = tmp_path_factory.mktemp("ft-dpo")
    reporter = RecordingReporter(checkpoint_root=root / "ckpts")
    spec = replace(SPEC, init_adapter_dir=sft_parent)
    result = train(
        spec, tiny_model_dir, train_file, root / "adapter", reporter, validation_file=valid_file
    )
    return spec, result, reporter


def test_a_resumed_continued_run_ends_like_the_uninterrupted_one(
    ft_dpo_run, pref_files, tiny_model_dir: Path, tmp_path: Path
) -> None:
    """The resumed run's reference is the parent again (its tables are computed before the
    checkpoint's adapter is restored): the same figures and the same adapter."""
    spec, result, reporter = ft_dpo_run
    train_file, valid_file = pref_files
    index = 2  # step 4: the parent's adapter has moved for four steps
    done = reporter.checkpoints[index].step
    assert done == 4
    resumed = RecordingReporter()
    again = train(
        spec,
        tiny_model_dir,
        train_file,
        tmp_path / "adapter",
        resumed,
        validation_file=valid_file,
        resume_from=reporter.checkpoint_copies[index],
    )
    assert ("info", f"Resumed from step {done}") in resumed.messages
    assert again.steps == result.steps == TOTAL
    for got, want in zip(resumed.metrics_extra, reporter.metrics_extra[done:], strict=True):
        figures = {**got["extra"], "valid_loss": got["valid_loss"]}
        wanted = {**want["extra"], "valid_loss": want["valid_loss"]}
        assert figures.keys() == wanted.keys() and got["step"] == want["step"]
        for key, value in wanted.items():  # train_*, valid_* and full_valid_* figures
            assert figures[key] == (value if value is None else pytest.approx(value, rel=1e-5))
    for got, want in zip(resumed.metrics_calls, reporter.metrics_calls[done:], strict=True):
        assert got == pytest.approx(want, rel=1e-5, abs=1e-6)
    assert_same_adapter(again.adapter_dir, result.adapter_dir, rtol=1e-5, atol=1e-6)


def test_a_continued_run_on_two_processes_matches_one_process(
    sft_parent: Path, pref_files, tiny_model_dir: Path, tmp_path: Path
) -> None:
    """Under data parallelism each rank computes its share of both reference tables (the
    parent's, as one process does) and the tables are summed: the same run as one process."""
    from worker.training.distributed import train_data_parallel

    train_file, valid_file = pref_files
    spec = replace(
        SPEC,
        adapter=replace(SPEC.adapter, dropout=0.0),  # no rank-dependent dropout masks
        n_epochs=1,
        checkpoint_every_n_steps=None,
        init_adapter_dir=sft_parent,
    )
    one, two = RecordingReporter(), RecordingReporter()
    single = train(
        spec, tiny_model_dir, train_file, tmp_path / "one", one, validation_file=valid_file
    )
    double = train_data_parallel(
        2,
        spec,
        tiny_model_dir,
        train_file,
        tmp_path / "two",
        two,
        validation_file=valid_file,
        backend="gloo",
    )
    assert double.steps == single.steps == 3
    assert two.losses == pytest.approx(one.losses, rel=1e-5)
    assert one.losses[0] == pytest.approx(math.log(2), abs=1e-5)  # the parent is the reference
    for got, want in zip(two.metrics_extra, one.metrics_extra, strict=True):
        for key, value in want["extra"].items():
            assert got["extra"][key] == (
                value if value is None else pytest.approx(value, rel=1e-4, abs=1e-6)
            )
    assert one.metrics_extra[-1]["extra"]["full_valid_reward_margin"] is not None


def test_a_continued_run_resumed_under_fsdp_keeps_the_parents_reference(
    sft_parent: Path, pref_files, tiny_model_dir: Path, tmp_path: Path
) -> None:
    """A sharded run loads its checkpoint's adapter before it can compute anything, so it reads
    the reference tables the checkpoint keeps (the parent's): resumed on two FSDP ranks, a
    continued DPO run ends like the uninterrupted single process."""
    from worker.training.distributed import train_data_parallel
    from worker.training.recipe import REFERENCE_FILE

    train_file, valid_file = pref_files
    spec = replace(
        SPEC,
        adapter=replace(SPEC.adapter, dropout=0.0),  # no rank-dependent dropout masks
        n_epochs=1,
        checkpoint_every_n_steps=1,
        init_adapter_dir=sft_parent,
    )
    whole = RecordingReporter(checkpoint_root=tmp_path / "ckpts")
    single = train(
        spec, tiny_model_dir, train_file, tmp_path / "one", whole, validation_file=valid_file
    )
    checkpoint = whole.checkpoint_copies[0]
    assert whole.checkpoints[0].step == 1 and (checkpoint / REFERENCE_FILE).is_file()
    resumed = RecordingReporter()
    sharded = train_data_parallel(
        2,
        replace(spec, options=replace(spec.options, sharding="fsdp")),
        tiny_model_dir,
        train_file,
        tmp_path / "two",
        resumed,
        validation_file=valid_file,
        resume_from=checkpoint,
        backend="gloo",
        timeout_seconds=60,
    )
    assert sharded.steps == single.steps == 3
    assert resumed.losses == pytest.approx(whole.losses[1:], rel=1e-5)
    for got, want in zip(resumed.metrics_extra, whole.metrics_extra[1:], strict=True):
        for key, value in want["extra"].items():
            assert got["extra"][key] == (
                value if value is None else pytest.approx(value, rel=1e-4, abs=1e-6)
            )
    assert_same_adapter(sharded.adapter_dir, single.adapter_dir, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("kind", ["lora", "dora"])
def test_dpo_trains_over_an_nf4_base(
    kind: str, pref_files, tiny_model_dir: Path, tmp_path: Path
) -> None:
    """QLoRA/QDoRA DPO: the reference is the 4-bit base (the adapter switched off), so step 1's
    loss is ln 2 exactly; the policy then moves, and the adapter records its quantized base."""
    from worker.training.quantization import QUANTIZATION_FILE

    train_file, valid_file = pref_files
    spec = replace(
        SPEC,
        adapter=AdapterSpec(type=kind, r=4, alpha=8, quantization="nf4"),
        n_epochs=1,
        checkpoint_every_n_steps=None,
    )
    reporter = RecordingReporter()
    result = train(
        spec, tiny_model_dir, train_file, tmp_path / "q", reporter, validation_file=valid_file
    )
    assert result.steps == 3
    assert reporter.losses[0] == pytest.approx(math.log(2), abs=1e-5)
    assert reporter.losses[-1] != pytest.approx(math.log(2), abs=1e-4)
    assert all(math.isfinite(loss) for loss in reporter.losses)
    assert (result.adapter_dir / QUANTIZATION_FILE).is_file()
