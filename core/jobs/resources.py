"""A new job's resources: its training options resolved for its model, its memory plan and pool.

Shared by job creation (``core.jobs.lifecycle.create_job``) and the pre-flight estimate
(``core.jobs.estimate``), so both say the same thing about a job body.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from core.catalog import lookup as catalog
from core.db.models import Model
from core.jobs.hyperparams import AdapterConfig, TrainingOptions, resolve_training
from core.jobs.planner import Architecture, PlanRequest, UnsupportedArchitecture
from core.scheduling import pools
from core.scheduling.broker import DEFAULT_POOL

DEFAULT_MAX_SEQ_LENGTH = 2048  # worker.training.recipe.DEFAULT_MAX_SEQ_LENGTH


@dataclass(frozen=True)
class JobResources:
    """What :func:`plan_job` decided.

    ``training`` are the resolved training options, as stored in the job's ``options``
    (``gradient_checkpointing`` included: the planner's choice when it was ``"auto"``);
    ``resources`` is the job's ``resources`` field (None: the model's size is unknown).
    """

    pool: str
    training: dict[str, Any]
    resources: dict[str, Any] | None


def model_architecture(model: Model) -> Architecture | None:
    """The base model's architecture from its config.json, None when unknown or unsupported
    (such a model still trains; it is only not sized)."""
    config = catalog.architecture_config(model)
    if config is None:
        return None
    try:
        return Architecture.from_config(config)
    except UnsupportedArchitecture:
        return None


def plan_job(
    session: Session,
    model: Model,
    *,
    adapter: AdapterConfig,
    training: TrainingOptions,
    max_seq_length: int | None,
    batch_size: int,
    requested_pool: str | None = None,
    declared_pools: Mapping[str, int | None] | None = None,
    precision: str | None = None,
    nodes: int = 1,
) -> JobResources:
    """Resolve the job's training options, plan its memory and choose its pool.

    The base model's weights are planned as the worker will hold them: the adapter's
    ``quantization`` (nf4, int8) shrinks the decoder's linear weights, and ``precision``
    ``"fp32"`` (the job's option) doubles every bf16 byte; ``"auto"``/``"bf16"``/``None``
    plan bf16, what a GPU pool trains in. A job too big for one GPU of its pool is planned
    sharded (FSDP) over the pool's GPUs where the engine can shard it (not an int8 base, not
    fp16); ``resources["sharding"]`` tells the worker. ``nodes`` > 1: the job runs on that
    many workers of its pool (a gang), its GPUs those of all of them.

    Raises InvalidRequest when the job fits no GPU pool (naming what would fit), or for an
    unknown pool.
    """
    arch = model_architecture(model)
    resolved = resolve_training(training, arch.parameters if arch else None)
    length = max_seq_length or min(
        (arch.max_position_embeddings if arch else None) or DEFAULT_MAX_SEQ_LENGTH,
        DEFAULT_MAX_SEQ_LENGTH,
    )
    request = PlanRequest(
        adapter_type=adapter.type,
        rank=adapter.r,
        target_modules=adapter.target_modules,
        max_seq_length=length,
        micro_batch_tokens=int(resolved["micro_batch_tokens"]),
        batch_size=batch_size,
        gradient_checkpointing=resolved["gradient_checkpointing"],
        quantization=adapter.quantization,
        weight_bytes=4 if precision == "fp32" else 2,
        # The engine refuses these under FSDP (worker.training.options.FSDP_INT8, FSDP_FP16).
        shardable=adapter.quantization != "int8" and precision != "fp16",
        nodes=nodes,
    )
    placement = pools.choose_pool(
        session, requested_pool, declared_pools, architecture=arch, request=request
    )
    found = placement.plan
    pool = placement.pool or DEFAULT_POOL  # choose_pool always names one
    resolved["gradient_checkpointing"] = (
        found.gradient_checkpointing if found else bool(resolved["gradient_checkpointing"])
    )
    resources = None
    if found is not None:
        resources = {
            **found.as_dict(),
            "pool": pool,
            "pool_gpu_memory_mib": placement.capacity_mib,
        }
    return JobResources(pool=pool, training=resolved, resources=resources)
