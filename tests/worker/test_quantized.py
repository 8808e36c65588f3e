"""QLoRA / QDoRA: training on a bitsandbytes NF4 (or int8) base, checkpoints, exact resume, and
the merged export that de-quantizes before merging (tiny Llama, seconds each)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

pytest.importorskip("bitsandbytes")

from core.jobs.hyperparams import AdapterConfig  # noqa: E402
from tests.worker.helpers import PIRATE, RecordingReporter  # noqa: E402
from worker.inference.merge import merge_adapter  # noqa: E402
from worker.training.options import EngineOptions  # noqa: E402
from worker.training.quantization import (  # noqa: E402
    QUANTIZATION_FILE,
    load_quantized,
    read_quantization,
)
from worker.training.recipe import train  # noqa: E402
from worker.training.spec import AdapterSpec, TrainingPaused, TrainSpec  # noqa: E402


def _spec(kind: str, quantization: str = "nf4", precision: str = "bf16") -> TrainSpec:
    return TrainSpec(
        adapter=AdapterSpec(type=kind, r=4, alpha=8, dropout=0.1, quantization=quantization),
        n_epochs=2,
        batch_size=4,
        learning_rate=2e-2,
        seed=5,
        options=EngineOptions(device="cpu", precision=precision),
    )


@pytest.fixture(scope="module")
def train_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "train.jsonl"
    path.write_text("\n".join(PIRATE.read_text().splitlines()[:8]) + "\n", encoding="utf-8")
    return path


def _weights(adapter_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(adapter_dir / "adapter_model.safetensors")


@pytest.mark.parametrize("kind", ["lora", "dora"])
def test_nf4_trains_pauses_and_resumes_exactly(
    kind: str, tiny_model_dir: Path, train_file: Path, tmp_path: Path
) -> None:
    spec = _spec(kind)
    whole = RecordingReporter()
    result = train(spec, tiny_model_dir, train_file, tmp_path / "whole", whole)
    assert result.steps == 4 and whole.losses[-1] < whole.losses[0]
    weights = _weights(result.adapter_dir)
    assert all(w.dtype == torch.float32 for w in weights.values())  # adapter stays float32
    assert any("lora_B" in k and w.abs().max() > 0 for k, w in weights.items())
    assert read_quantization(result.adapter_dir) == {"method": "nf4", "compute_dtype": "bfloat16"}

    paused = RecordingReporter(pause_after=2, checkpoint_root=tmp_path / "ckpts")
    with pytest.raises(TrainingPaused):
        train(spec, tiny_model_dir, train_file, tmp_path / "paused", paused)
    checkpoint = paused.checkpoint_copies[-1]
    assert (checkpoint / QUANTIZATION_FILE).is_file()
    resumed = RecordingReporter()
    again = train(
        spec, tiny_model_dir, train_file, tmp_path / "again", resumed, resume_from=checkpoint
    )
    assert resumed.losses == pytest.approx(whole.losses[2:], rel=1e-6)
    for key, value in _weights(again.adapter_dir).items():
        torch.testing.assert_close(value, weights[key], rtol=0, atol=0)


def test_a_full_precision_checkpoint_does_not_resume_a_quantized_run(
    tiny_model_dir: Path, train_file: Path, tmp_path: Path
) -> None:
    from dataclasses import replace

    from worker.training.checkpoints import CheckpointMismatch

    spec = _spec("lora")
    plain = replace(spec, adapter=replace(spec.adapter, quantization=None))
    paused = RecordingReporter(pause_after=1, checkpoint_root=tmp_path / "ckpts")
    with pytest.raises(TrainingPaused):
        train(plain, tiny_model_dir, train_file, tmp_path / "p", paused)
    with pytest.raises(CheckpointMismatch, match="quantization"):
        train(
            spec,
            tiny_model_dir,
            train_file,
            tmp_path / "q",
            RecordingReporter(),
            resume_from=paused.checkpoint_copies[-1],
        )


def test_int8_lora_trains(tiny_model_dir: Path, train_file: Path, tmp_path: Path) -> None:
    reporter = RecordingReporter()
    result = train(_spec("lora", "int8"), tiny_model_dir, train_file, tmp_path / "a", reporter)
    assert reporter.losses[-1] < reporter.losses[0]
    assert read_quantization(result.adapter_dir)["method"] == "int8"


def test_int8_dora_is_refused_with_a_clear_error() -> None:
    with pytest.raises(ValueError, match="nf4"):
        AdapterConfig(type="dora", quantization="int8")
    assert AdapterConfig(type="dora", quantization="nf4").quantization == "nf4"
    with pytest.raises(ValueError):
        AdapterConfig(quantization="int4")  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def nf4_dora(tiny_model_dir: Path, train_file: Path, tmp_path_factory) -> Path:
    """A QDoRA adapter trained in fp32 compute (references then differ by float rounding)."""
    out = tmp_path_factory.mktemp("nf4") / "adapter"
    spec = _spec("dora", precision="fp32")
    return train(spec, tiny_model_dir, train_file, out, RecordingReporter()).adapter_dir


def test_merge_dequantizes_the_base_first(
    tiny_model_dir: Path, nf4_dora: Path, tmp_path: Path
) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    adapter_dir = nf4_dora
    merged_dir = merge_adapter(tiny_model_dir, adapter_dir, tmp_path / "merged")
    merged = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32).eval()
    assert not hasattr(merged.config, "quantization_config")

    # The reference: the adapter over the quantized base it was trained on. Its eval-mode
    # forward is also what used to repack the 4-bit weights on AVX512-BF16 CPUs and garble
    # PEFT's DoRA norm (keep_standard_4bit_layout).
    quantized = load_quantized(tiny_model_dir, "nf4", torch.float32, torch.device("cpu"))
    served = PeftModel.from_pretrained(quantized, str(adapter_dir)).eval()
    plain = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    naive = PeftModel.from_pretrained(plain, str(adapter_dir)).merge_and_unload().eval()
    ids = torch.tensor([[1, 5, 9, 30, 42, 7, 3]])
    with torch.no_grad():
        want = served(ids).logits
        got = merged(ids).logits
        naive_err = (naive(ids).logits - want).abs().max()
    err = (got - want).abs().max()
    assert err < 1e-4
    assert err < naive_err / 10  # merging into the original weights is measurably further off


def test_serving_loads_the_base_quantized_as_the_adapter_was_trained(
    tiny_model_dir: Path, nf4_dora: Path, tmp_path: Path
) -> None:
    import bitsandbytes as bnb

    from core.settings import load_settings
    from core.storage.objects import LocalStore, upload_dir
    from worker.inference.adapters import AdapterRef
    from worker.inference.engine import GenerationParams, InferenceEngine

    store = LocalStore(tmp_path / "objects")
    upload_dir(store, "jobs/ftjob-q/adapter", nf4_dora)
    engine = InferenceEngine(
        load_settings(),
        store,
        adapter_cache_size=2,
        adapter_dir=tmp_path / "adapters",
        model_loader=lambda name: tiny_model_dir,
    )
    params = GenerationParams(
        messages=[{"role": "user", "content": "Hello?"}], max_tokens=4, temperature=0.0
    )
    name = "tiny-random-llama"
    assert engine.complete(name, None, params).completion_tokens == 4
    tuned = engine.complete(name, AdapterRef("ftjob-q", "jobs/ftjob-q/adapter"), params)
    assert tuned.completion_tokens == 4
    assert list(engine._bases) == [name, f"{name}@nf4"]
    quantized = engine._bases[f"{name}@nf4"]
    assert quantized.adapters == {"ftjob-q"}
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in quantized.model.modules())
    assert not any(isinstance(m, bnb.nn.Linear4bit) for m in engine._bases[name].model.modules())


def test_int8_merge_dequantizes_the_base_first(
    tiny_model_dir: Path, train_file: Path, tmp_path: Path
) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    spec = _spec("lora", "int8", precision="fp32")
    adapter_dir = train(spec, tiny_model_dir, train_file, tmp_path / "a", RecordingReporter())
    merged_dir = merge_adapter(tiny_model_dir, adapter_dir.adapter_dir, tmp_path / "merged")
    merged = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32).eval()
    quantized = load_quantized(tiny_model_dir, "int8", torch.float32, torch.device("cpu"))
    served = PeftModel.from_pretrained(quantized, str(adapter_dir.adapter_dir)).eval()
    ids = torch.tensor([[1, 5, 9, 30, 42, 7, 3]])
    with torch.no_grad():
        err = (merged(ids).logits - served(ids).logits).abs().max()
    # LLM.int8()'s forward also rounds the activations to int8: agreement to ~2e-3, not 1e-6.
    assert err < 5e-3


def test_the_planner_counts_the_bytes_bitsandbytes_stores(tiny_model_dir: Path) -> None:
    """core.jobs.planner.QUANTIZED_BYTES["nf4"] against the tiny model as training loads it."""
    import json

    import bitsandbytes as bnb

    from core.jobs.planner import QUANTIZED_BYTES, Architecture

    model = load_quantized(tiny_model_dir, "nf4", torch.bfloat16, torch.device("cpu"))
    stored = 0
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            weight = module.weight
            state = weight.quant_state
            # The packed 4-bit words, the uint8 block absmax and its fp32 absmax (double
            # quantization); the 256-entry code tables are per layer, not per weight.
            stored += weight.numel() * weight.element_size()
            stored += state.absmax.numel() * state.absmax.element_size()
            stored += state.state2.absmax.numel() * state.state2.absmax.element_size()
    arch = Architecture.from_config(json.loads((tiny_model_dir / "config.json").read_text()))
    assert stored / arch.linear_parameters == pytest.approx(QUANTIZED_BYTES["nf4"], rel=0.01)


def test_the_quantization_record_leaves_the_worker_with_the_adapter(
    nf4_dora: Path, tmp_path: Path
) -> None:
    """The object store's adapter (served, merged) and its download keep how the base was
    stored; a full-precision adapter's files are the PEFT ones alone."""
    import shutil
    import tarfile

    from worker import artifacts

    assert artifacts.OPTIONAL_ADAPTER_FILES == (QUANTIZATION_FILE,)
    assert artifacts.adapter_files(nf4_dora) == [*artifacts.ADAPTER_FILES, QUANTIZATION_FILE]
    with tarfile.open(artifacts.pack_adapter(nf4_dora, tmp_path / "adapter.tar.gz")) as tar:
        assert QUANTIZATION_FILE in tar.getnames()
    plain = tmp_path / "plain"
    plain.mkdir()
    for name in artifacts.ADAPTER_FILES:
        shutil.copy(nf4_dora / name, plain / name)
    assert artifacts.adapter_files(plain) == list(artifacts.ADAPTER_FILES)


@pytest.mark.parametrize(
    ("kind", "dropout", "precision"),
    [
        ("lora", 0.0, "fp32"),
        ("lora", 0.0, "bf16"),
        ("dora", 0.0, "fp32"),
        ("dora", 0.0, "bf16"),
        ("dora", 0.1, "fp32"),
    ],
)
def test_fast_qlora_and_qdora_train_as_pefts(
    kind: str,
    dropout: float,
    precision: str,
    tiny_model_dir: Path,
    train_file: Path,
    tmp_path: Path,
) -> None:
    """QLoRA/QDoRA through the engine's fused forward (the adapter added into the quantized
    layer's output in one product) and fast DoRA (the NF4 weight de-quantized once per step,
    for the norm only) train the same adapter as PEFT's own forward (de-quantized on every
    pass), with the adapter's dropout off (fused) and on (PEFT's forward, fast DoRA norm)."""
    from dataclasses import replace

    spec = _spec(kind, precision=precision)
    spec = replace(spec, n_epochs=1, adapter=replace(spec.adapter, dropout=dropout))
    results = {}
    for fast in (True, False):
        reporter = RecordingReporter()
        options = replace(spec.options, fast_dora=fast, fused_adapters=fast)
        result = train(
            replace(spec, options=options),
            tiny_model_dir,
            train_file,
            tmp_path / str(fast),
            reporter,
        )
        results[fast] = (reporter.losses, _weights(result.adapter_dir))
    (fast_losses, fast_weights), (peft_losses, peft_weights) = results[True], results[False]
    assert fast_losses == pytest.approx(peft_losses, rel=1e-4)
    for key, value in peft_weights.items():
        if precision == "fp32":
            torch.testing.assert_close(fast_weights[key], value, rtol=1e-3, atol=1e-5)
        else:
            # The bf16 base rounds its input to bf16: a float32 rounding difference (sums in
            # another order) can move a rounding step there, and Adam carries it on.
            relative = float((fast_weights[key] - value).norm() / value.norm())
            assert relative < 2e-3, key  # measured: at most 5e-4


@pytest.mark.parametrize("kind", ["lora", "dora"])
def test_the_fused_forward_runs_on_quantized_layers(kind: str, tiny_model_dir: Path) -> None:
    """PEFT's bitsandbytes LoRA layers get the fused forward too (float32 activations over a
    bf16-computing NF4 base, as PEFT prepares a QLoRA model), and it equals PEFT's forward."""
    import copy

    from worker.training.adapters import attach_adapter
    from worker.training.fast_dora import enable_fast_dora
    from worker.training.fused_adapter import disable_fused_adapters, enable_fused_adapters

    base = load_quantized(tiny_model_dir, "nf4", torch.bfloat16, torch.device("cpu"))
    torch.manual_seed(0)
    spec = AdapterSpec(type=kind, r=4, alpha=8, dropout=0.0, quantization="nf4")  # type: ignore[arg-type]
    peft_model = attach_adapter(base, spec)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.05)
    fused = copy.deepcopy(peft_model)
    if kind == "dora":
        enable_fast_dora(fused)
    switched = enable_fused_adapters(fused)
    assert switched > 0
    layer = fused.base_model.model.model.layers[0].mlp.up_proj
    assert type(layer).__name__ == "FusedLinear4bit"
    peft_model.train()
    fused.train()
    x = torch.randn(2, 9, layer.in_features)  # float32, as the prepared model's hidden states
    assert layer._plain_adapter(x, {}) == "default"  # the fused path, not PEFT's fallback
    ids = torch.randint(0, 200, (2, 11))
    want = peft_model(input_ids=ids).logits
    got = fused(input_ids=ids).logits
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    want.square().mean().backward()
    got.square().mean().backward()
    grads = {n: p.grad for n, p in fused.named_parameters() if p.grad is not None}
    expected = {n: p.grad for n, p in peft_model.named_parameters() if p.grad is not None}
    assert grads.keys() == expected.keys() and expected
    for name, grad in expected.items():
        torch.testing.assert_close(grads[name], grad, rtol=1e-3, atol=1e-5, msg=name)
    assert disable_fused_adapters(fused) == switched and type(layer).__name__ == "Linear4bit"
