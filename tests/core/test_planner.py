"""The memory planner (core/jobs/planner.py): sizes from config.json, the plan's terms, the
choice of pool, gradient checkpointing and sharding (DDP or FSDP), and the refusal that says
what would fit."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from core.errors import InvalidRequest
from core.jobs.hyperparams import TrainingOptions, resolve_training, training_defaults
from core.jobs.planner import (
    MIB,
    Architecture,
    PlanRequest,
    UnsupportedArchitecture,
    place,
    plan,
    trainable_parameters,
)

SMOLLM2 = {
    "model_type": "llama",
    "hidden_size": 576,
    "intermediate_size": 1536,
    "num_hidden_layers": 30,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "head_dim": 64,
    "vocab_size": 49152,
    "tie_word_embeddings": True,
    "max_position_embeddings": 8192,
}
LLAMA_8B = {
    "model_type": "llama",
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "vocab_size": 128256,
    "tie_word_embeddings": False,
    "max_position_embeddings": 131072,
}
LLAMA_70B = {
    **LLAMA_8B,
    "hidden_size": 8192,
    "intermediate_size": 28672,
    "num_hidden_layers": 80,
    "num_attention_heads": 64,
}
POOLS = {"default": 23034, "a100-80gb": 81920}


def test_the_size_comes_from_config_json():
    assert Architecture.from_config(SMOLLM2).parameters == 134_515_008  # as transformers counts
    assert Architecture.from_config(LLAMA_8B).parameters == 8_030_261_248
    assert round(Architecture.from_config(LLAMA_70B).parameters / 1e9, 1) == 70.6


def test_gemma_ties_its_embeddings_by_default_and_head_dim_is_read():
    gemma = {**LLAMA_8B, "model_type": "gemma", "head_dim": 256, "num_attention_heads": 8}
    gemma.pop("tie_word_embeddings")
    arch = Architecture.from_config(gemma)
    assert arch.tie_word_embeddings and arch.head_dim == 256
    assert arch.linear_shapes()["q_proj"] == (4096, 2048)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({**SMOLLM2, "model_type": "gpt2"}, "model_type 'gpt2'"),
        ({**SMOLLM2, "hidden_size": None}, "hidden_size must be a positive integer"),
        ({**SMOLLM2, "num_hidden_layers": "30"}, "num_hidden_layers must be a positive integer"),
    ],
)
def test_a_config_the_planner_cannot_size_is_named(config, message):
    with pytest.raises(UnsupportedArchitecture, match=message):
        Architecture.from_config(config)


def test_each_term_follows_its_formula():
    arch = Architecture.from_config(SMOLLM2)
    request = PlanRequest(
        adapter_type="lora",
        rank=8,
        max_seq_length=1024,
        micro_batch_tokens=1024,
        gradient_checkpointing=False,
        weight_bytes=2,
        cuda=True,
    )
    found = plan(arch, request)
    assert found.weights == arch.parameters * 2
    # LoRA r=8 on the 7 linear layers of 30 decoder layers: r * (in + out) each.
    per_layer = 8 * (576 * 2 + 576 + 192 + 576 + 192 + 576 * 2 + 2 * (576 + 1536) + 1536 + 576)
    assert found.trainable_parameters == per_layer * 30
    assert found.adapter == per_layer * 30 * 16
    per_token_layer = 4 * 576 + 3 * 576 + 2 * 192 + 4 * 1536
    assert found.activations == 30 * per_token_layer * 1024 * 2
    assert found.logits == 4 * 1024 * 49152 * 4
    body = found.weights + found.adapter + found.activations + found.logits
    assert found.headroom == pytest.approx(0.1 * body + 1024 * MIB, abs=2)
    assert found.peak == body + found.headroom


def test_dora_adds_its_magnitude_vectors_and_saved_outputs():
    arch = Architecture.from_config(SMOLLM2)
    lora = PlanRequest(adapter_type="lora", gradient_checkpointing=False)
    dora = PlanRequest(adapter_type="dora", gradient_checkpointing=False)
    outputs = 576 + 192 + 192 + 576 + 1536 + 1536 + 576
    assert trainable_parameters(arch, dora) - trainable_parameters(arch, lora) == 30 * outputs
    assert plan(arch, dora).activations > plan(arch, lora).activations


def test_targets_a_list_counts_only_those_layers():
    arch = Architecture.from_config(SMOLLM2)
    only_q = PlanRequest(adapter_type="lora", rank=4, target_modules=["q_proj"])
    assert trainable_parameters(arch, only_q) == 30 * 4 * (576 + 576)


def test_checkpointing_keeps_only_layer_inputs_and_one_layer():
    arch = Architecture.from_config(LLAMA_8B)
    without = plan(arch, PlanRequest(gradient_checkpointing=False))
    with_it = plan(arch, PlanRequest(gradient_checkpointing=True))
    assert with_it.activations < without.activations / 10
    assert (with_it.weights, with_it.logits) == (without.weights, without.logits)


def test_quantization_shrinks_only_the_linear_weights():
    arch = Architecture.from_config(LLAMA_8B)
    bf16 = plan(arch, PlanRequest(gradient_checkpointing=True))
    nf4 = plan(arch, PlanRequest(gradient_checkpointing=True, quantization="nf4"))
    int8 = plan(arch, PlanRequest(gradient_checkpointing=True, quantization="int8"))
    assert nf4.weights < int8.weights < bf16.weights
    assert nf4.weights > arch.other_parameters * 2  # embeddings and head stay bf16
    # 4 bits, a uint8 absmax per 64 weights, an fp32 absmax per 256 blocks (bitsandbytes'
    # double quantization; tests/worker/test_quantized.py checks it against a real model).
    linear = nf4.weights - arch.other_parameters * 2
    assert linear / arch.linear_parameters == pytest.approx(0.5159, abs=1e-4)
    assert (int8.weights - arch.other_parameters * 2) / arch.linear_parameters > 1.0
    assert nf4.as_dict()["quantization"] == "nf4"


def test_fp32_doubles_the_weights_and_activations_of_bf16():
    arch = Architecture.from_config(SMOLLM2)
    bf16 = plan(arch, PlanRequest(gradient_checkpointing=False))
    fp32 = plan(arch, PlanRequest(gradient_checkpointing=False, weight_bytes=4))
    assert (fp32.weights, fp32.activations) == (2 * bf16.weights, 2 * bf16.activations)
    assert (fp32.adapter, fp32.logits) == (bf16.adapter, bf16.logits)  # float32 either way


def test_a_long_example_is_one_micro_batch_however_small_the_budget():
    arch = Architecture.from_config(SMOLLM2)
    found = plan(arch, PlanRequest(max_seq_length=4096, micro_batch_tokens=1024))
    assert found.tokens == 4096
    assert plan(arch, PlanRequest(max_seq_length=512, micro_batch_tokens=8192)).tokens == 4096
    one = PlanRequest(max_seq_length=512, micro_batch_tokens=8192, batch_size=1)
    assert plan(arch, one).tokens == 512


def test_the_smallest_pool_that_fits_is_chosen():
    small = place(Architecture.from_config(SMOLLM2), PlanRequest(), POOLS)
    assert small.pool == "default" and not small.plan.gradient_checkpointing
    big = place(Architecture.from_config(LLAMA_8B), PlanRequest(max_seq_length=4096), POOLS)
    assert big.pool == "a100-80gb"
    assert big.plan.peak_mib <= 81920


def test_checkpointing_is_turned_on_only_when_needed():
    arch = Architecture.from_config(LLAMA_8B)
    request = PlanRequest(micro_batch_tokens=4096, max_seq_length=2048)
    without = PlanRequest(micro_batch_tokens=4096, gradient_checkpointing=False)
    assert plan(arch, without).peak_mib > 40960
    placed = place(arch, request, {"a100-40gb": 40960})
    assert placed.plan.gradient_checkpointing
    roomy = place(arch, request, {"huge": 10_000_000})
    assert not roomy.plan.gradient_checkpointing
    # Asked for explicitly, it is kept even where it is not needed.
    forced = place(arch, PlanRequest(gradient_checkpointing=True), {"huge": 10_000_000})
    assert forced.plan.gradient_checkpointing


def test_a_70b_job_is_refused_with_what_would_fit():
    with pytest.raises(InvalidRequest) as caught:
        place(Architecture.from_config(LLAMA_70B), PlanRequest(), POOLS)
    error = caught.value
    assert error.code == "job_too_large"
    assert "the largest GPUs here are 81,920 MiB (pool 'a100-80gb')" in error.message
    assert 'adapter.quantization "nf4"' in error.message
    # The figure shown is the cheapest plan (with checkpointing), not a strawman.
    shown = int(error.message.split("about ")[1].split(" MiB")[0].replace(",", ""))
    cheapest = plan(Architecture.from_config(LLAMA_70B), PlanRequest(gradient_checkpointing=True))
    assert shown == cheapest.peak_mib


def test_a_shorter_sequence_is_suggested_when_it_fits():
    arch = Architecture.from_config(LLAMA_8B)
    request = PlanRequest(max_seq_length=32768, micro_batch_tokens=32768)
    with pytest.raises(InvalidRequest, match=r"max_seq_length \d+"):
        place(arch, request, {"default": 23034, "a100-40gb": 40960})


def test_fsdp_splits_the_decoder_and_adapter_but_not_activations():
    arch = Architecture.from_config(SMOLLM2)
    request = PlanRequest(adapter_type="lora", rank=8, max_seq_length=1024, gpus=4)
    ddp = plan(arch, replace(request, sharding="ddp"))
    fsdp = plan(arch, replace(request, sharding="fsdp"))
    assert (ddp.sharding, fsdp.sharding) == ("ddp", "fsdp")
    layer = (arch.linear_parameters // 30 + 2 * 576) * 2  # one decoder layer's weights, bf16
    outside = 49152 * 576 * 2 + 576 * 2  # tied embeddings/head and the final norm, whole
    assert ddp.weights == 30 * layer + outside == arch.parameters * 2
    # A quarter of everything, plus two gathered layers and the root's weights whole.
    assert fsdp.weights == math.ceil((30 * layer + outside) / 4 + 2 * layer + outside)
    assert fsdp.adapter == math.ceil(ddp.adapter / 4)
    assert (fsdp.activations, fsdp.logits) == (ddp.activations, ddp.logits)
    # One GPU has nothing to share: FSDP plans as DDP does.
    alone = plan(arch, replace(request, sharding="fsdp", gpus=1))
    assert alone.peak == ddp.peak
    assert fsdp.as_dict()["sharding"] == "fsdp"


def test_fsdp_is_chosen_only_when_no_single_gpu_fits():
    arch = Architecture.from_config(LLAMA_8B)
    request = PlanRequest(max_seq_length=2048)
    four = {"v100-32gb": 4}
    # Llama 8B needs ~40 GB on one GPU even with checkpointing: over four 32 GB GPUs it is
    # sharded, with checkpointing still on.
    placed = place(arch, request, {"v100-32gb": 32768}, gpus=four)
    assert (placed.plan.sharding, placed.plan.gpus) == ("fsdp", 4)
    assert placed.plan.gradient_checkpointing and placed.plan.peak_mib <= 32768
    assert placed.plan.peak_mib < plan(arch, replace(request, gradient_checkpointing=True)).peak_mib
    # Where one GPU holds it, the job stays data parallel however many GPUs there are.
    roomy = place(arch, request, {"a100-80gb": 81920}, gpus={"a100-80gb": 4})
    assert (roomy.plan.sharding, roomy.plan.gpus) == ("ddp", 4)
    # The smallest pool that fits wins, sharded or not.
    both = place(arch, request, {"v100-32gb": 32768, "a100-80gb": 81920}, gpus=four)
    assert (both.pool, both.plan.sharding) == ("v100-32gb", "fsdp")
    # Two such GPUs are not enough; the refusal names the GPU count that would be.
    with pytest.raises(InvalidRequest, match=r"4 such GPUs per worker \(sharded with FSDP\)"):
        place(arch, request, {"v100-32gb": 32768}, gpus={"v100-32gb": 2})


def test_a_multi_node_job_is_planned_over_the_gpus_of_all_its_hosts():
    arch = Architecture.from_config(LLAMA_8B)
    request = PlanRequest(max_seq_length=2048)
    # Two 32 GB GPUs per worker do not hold Llama 8B (see above); two such workers do.
    placed = place(arch, replace(request, nodes=2), {"v100-32gb": 32768}, {"v100-32gb": 2})
    assert (placed.plan.sharding, placed.plan.gpus, placed.plan.nodes) == ("fsdp", 4, 2)
    assert placed.plan.as_dict()["nodes"] == 2
    assert placed.plan.peak_mib <= 32768
    # A single-node job there is refused, naming both ways out.
    with pytest.raises(InvalidRequest) as caught:
        place(arch, request, {"v100-32gb": 32768}, gpus={"v100-32gb": 2})
    assert "4 such GPUs per worker" in caught.value.message
    assert "nodes 2 (2 workers of the pool, sharded with FSDP)" in caught.value.message


def test_what_the_engine_cannot_shard_is_never_planned_sharded():
    arch = Architecture.from_config(LLAMA_8B)
    # An int8 base or fp16 (core.jobs.resources sets shardable=False for them).
    request = PlanRequest(max_seq_length=2048, shardable=False)
    with pytest.raises(InvalidRequest) as caught:
        place(arch, request, {"v100-32gb": 32768}, gpus={"v100-32gb": 4})
    assert "FSDP" not in caught.value.message
    # Asked for DDP, the planner keeps it.
    forced = place(
        arch, replace(request, shardable=True, sharding="ddp"), {"big": 81920}, {"big": 4}
    )
    assert forced.plan.sharding == "ddp"


def test_unknown_pool_sizes_send_the_job_nowhere_in_particular():
    arch = Architecture.from_config(LLAMA_70B)
    assert place(arch, PlanRequest(), {}).pool is None
    assert place(arch, PlanRequest(), {"default": None, "a100-80gb": 81920}).pool is None


def test_training_defaults_depend_on_the_model_size():
    small = resolve_training(TrainingOptions(), 135_000_000)
    assert small == {
        "warmup_ratio": 0.0,
        "weight_decay": 0.0,
        "lr_scheduler": "linear",
        "micro_batch_tokens": 8192,
        "gradient_checkpointing": None,
    }
    assert training_defaults(8_000_000_000)["lr_scheduler"] == "cosine"
    assert training_defaults(8_000_000_000)["warmup_ratio"] == 0.03
    assert training_defaults(70_000_000_000)["micro_batch_tokens"] == 2048
    chosen = TrainingOptions(warmup_ratio=0.1, lr_scheduler="constant", gradient_checkpointing=True)
    resolved = resolve_training(chosen, 70_000_000_000)
    assert resolved["warmup_ratio"] == 0.1 and resolved["lr_scheduler"] == "constant"
    assert resolved["gradient_checkpointing"] is True


def test_quantization_is_the_adapters_not_a_training_option():
    from pydantic import ValidationError

    from core.jobs.hyperparams import AdapterConfig

    for value in ("nf4", None):
        with pytest.raises(ValidationError, match="set adapter.quantization"):
            TrainingOptions.model_validate({"quantization": value})
    assert AdapterConfig(type="lora", quantization="int8").quantization == "int8"


@pytest.mark.parametrize(
    "body",
    [
        {"warmup_ratio": 0.9},
        {"warmup_ratio": True},
        {"weight_decay": "0.1"},
        {"lr_scheduler": "step"},
        {"gradient_checkpointing": "yes"},
        {"micro_batch_tokens": 16},
        {"quantization": "fp8"},
        {"warmup": 0.1},
    ],
)
def test_bad_training_options_are_rejected(body):
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        TrainingOptions.model_validate(body)
