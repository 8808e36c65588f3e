"""Fully sharded data parallelism (FSDP2) of one job across the ranks of one worker.

With ``EngineOptions.sharding == "fsdp"`` the frozen base model, the adapter and the optimizer
state are split across the ranks instead of copied onto each: ``fully_shard`` is applied to
every decoder layer, then to the whole model (embeddings, final norm and the tied head), so a
layer's weights are all-gathered just before it runs and freed right after.

Loading never puts a whole model on every rank. Every rank builds the model on the ``meta``
device (shapes only) and shards it; rank 0 alone loads the checkpoint into CPU memory, attaches
the adapter exactly as a single process would (same seed, so the same initial adapter) and
broadcasts each tensor into the other ranks' shards (``set_model_state_dict`` with
``broadcast_from_rank0``). Buffers that are not in the state dict (rotary frequencies) are
broadcast the same way.

Checkpoints gather the adapter and its optimizer state onto rank 0 and write them in the
single-process layout (``worker.training.checkpoints``): adapters are small, and a gathered
checkpoint resumes on any number of ranks, sharded or not. Every function here that gathers or
scatters is a collective: all ranks must call it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, fully_shard

from worker.training.options import FSDP_FP16

if TYPE_CHECKING:
    from peft import PeftModel


def check_shardable(dtype: torch.dtype) -> None:
    """Refuse a resolved precision that FSDP cannot train instead of training it wrongly.

    ``EngineOptions`` already refuses a forced fp16 (and ``TrainSpec`` validation an int8
    base); this catches ``"auto"``, which picks fp16 on a GPU without bf16, whose
    ``GradScaler`` does not unscale sharded (DTensor) gradients.

    Raises:
        ValueError: fp16 (:data:`~worker.training.options.FSDP_FP16`).
    """
    if dtype == torch.float16:
        raise ValueError(FSDP_FP16)


def decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The repeated decoder blocks of a transformers causal LM (PEFT-wrapped or not).

    Raises:
        ValueError: the model has no ``layers`` list under its decoder (not a decoder-only
            family this engine knows how to shard).
    """
    get_base_model = getattr(model, "get_base_model", None)
    base = get_base_model() if get_base_model is not None else model
    get_decoder = getattr(base, "get_decoder", None)
    decoder = get_decoder() if get_decoder is not None else None
    layers = getattr(decoder, "layers", None)
    if not isinstance(layers, torch.nn.ModuleList) or not len(layers):
        raise ValueError(f"cannot shard {type(base).__name__}: no decoder layers found")
    return list(layers)


def shard(model: torch.nn.Module, device: torch.device) -> None:
    """Apply FSDP2 to each decoder layer and then to ``model`` (in place).

    Gradients are reduce-scattered as sums, not means: the recipe divides every rank's loss by
    the token count of the whole step, so the sum over ranks is the step's gradient.
    """
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    for layer in decoder_layers(model):
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.set_gradient_divide_factor(1.0)
            # Plain SUM collectives: gloo has no pre-multiplied sum.
            module.set_force_sum_reduction_for_comms(True)


def is_sharded(model: torch.nn.Module) -> bool:
    """Whether ``model`` was sharded by :func:`shard`."""
    return isinstance(model, FSDPModule)


def build_sharded_model(
    build: Callable[[], PeftModel],
    load_full: Callable[[], PeftModel] | None,
    device: torch.device,
) -> PeftModel:
    """A sharded model on ``device`` whose weights are those of rank 0's ``load_full()``.

    Args:
        build: builds the model (base + adapter, every swap applied) with no weights; called
            on every rank under ``torch.device("meta")``.
        load_full: on rank 0, loads the base model on the CPU and attaches the adapter (the
            source of every weight, initial adapter included); ``None`` on the other ranks.
        device: this rank's device.
    """
    is_source = dist.get_rank() == 0
    if is_source != (load_full is not None):
        raise ValueError("load_full must be given on rank 0 and only there")
    with torch.device("meta"):
        model = build()
    shard(model, device)
    model.to_empty(device=device)
    full = load_full() if load_full is not None else None
    full_state = full.state_dict() if full is not None else {}
    set_model_state_dict(
        model,
        full_state,
        options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True),
    )
    # Non-persistent buffers (rotary inverse frequencies) are not in any state dict.
    source_buffers = dict(full.named_buffers()) if full is not None else {}
    for name, buffer in model.named_buffers():
        if is_source:
            buffer.copy_(source_buffers[name])
        dist.broadcast(buffer, src=0)
    del full, full_state, source_buffers
    return model


def _trainable_state_options() -> StateDictOptions:
    return StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=True)


def gather_adapter_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The full trainable parameters on rank 0's CPU, keyed as ``model.state_dict()``
    (empty on the other ranks). A collective."""
    state = get_model_state_dict(model, options=_trainable_state_options())
    return cast("dict[str, torch.Tensor]", state)


def gather_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> Any:
    """The full optimizer state on rank 0's CPU, in ``optimizer.state_dict()``'s layout
    (parameters numbered in parameter-group order), so a single process can load it; empty
    on the other ranks. A collective."""
    by_name = get_optimizer_state_dict(model, optimizer, options=_trainable_state_options())
    if dist.get_rank() != 0:
        return {}
    numbers = {name: n for n, name in enumerate(_parameter_names(model, optimizer))}
    return _renumber(by_name, numbers)


def load_optimizer_state(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]
) -> None:
    """Load a full optimizer state in ``optimizer.state_dict()``'s layout (every rank passes
    the same one) into the sharded optimizer. A collective."""
    names = dict(enumerate(_parameter_names(model, optimizer)))
    if set(names) != {p for g in state["param_groups"] for p in g["params"]}:
        raise ValueError("the checkpoint's optimizer state is for other parameters")
    set_optimizer_state_dict(
        model, optimizer, _renumber(state, names), options=StateDictOptions(full_state_dict=True)
    )


def _parameter_names(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    """The optimizer's parameters' names in the order ``Optimizer.state_dict`` numbers them."""
    names = {param: name for name, param in model.named_parameters()}
    return [names[param] for group in optimizer.param_groups for param in group["params"]]


def _renumber(state: dict[str, Any], key: dict[Any, Any]) -> dict[str, Any]:
    return {
        "state": {key[k]: v for k, v in state["state"].items()},
        "param_groups": [
            {**group, "params": [key[p] for p in group["params"]]}
            for group in state["param_groups"]
        ],
    }
