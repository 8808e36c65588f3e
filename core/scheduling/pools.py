"""Worker pools: which pool a job runs in.

The rule (docs/operations.md "Pools"):

1. A job that names a pool (the ``pool`` extra field on creation) goes there; the name must be
   ``default`` or a known pool: declared in ``DORADO_POOLS`` or with a registered worker.
2. Otherwise it goes to the known GPU pool with the *smallest* GPU memory that still fits the
   job's estimated memory (so big cards stay free for big models).
3. Otherwise (no GPU pool fits, the model's size is unknown, or only CPU workers exist) it goes
   to ``default``.

The memory estimate is deliberately rough: frozen weights in bf16 plus a fixed share for the
adapter, optimizer state and activations, plus the CUDA context.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from core.db.models import Worker
from core.errors import InvalidRequest
from core.scheduling.broker import DEFAULT_POOL

POOL_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
# Parameters of the built-in models; other models are sized from their name ("...-8b-...").
MODEL_PARAMETERS: dict[str, int] = {
    "smollm2-135m-instruct": 134_515_008,
    "tiny-random-llama": 1_200_000,
}
_SIZE_IN_NAME = re.compile(r"(?<![a-z0-9.])(\d+(?:\.\d+)?)([mb])(?![a-z0-9])")
BYTES_PER_PARAMETER = 2  # bf16 weights
TRAINING_OVERHEAD = 1.3  # adapter, its optimizer state and activations on top of the weights
CUDA_CONTEXT_MB = 1024


def model_parameters(model: str) -> int | None:
    """The parameter count of a base model, or None when it cannot be told."""
    if model in MODEL_PARAMETERS:
        return MODEL_PARAMETERS[model]
    match = _SIZE_IN_NAME.search(model.lower())
    if match is None:
        return None
    scale = 1e9 if match.group(2) == "b" else 1e6
    return int(float(match.group(1)) * scale)


def estimated_gpu_memory_mb(model: str) -> int | None:
    """Rough GPU memory (MiB) a LoRA/DoRA fine-tune of ``model`` needs on one GPU."""
    params = model_parameters(model)
    if params is None:
        return None
    weights_mb = params * BYTES_PER_PARAMETER / 2**20
    return math.ceil(weights_mb * TRAINING_OVERHEAD + CUDA_CONTEXT_MB)


def pool_capacities(
    session: Session, declared: Mapping[str, int | None] | None = None
) -> dict[str, int | None]:
    """Every known pool (declared in DORADO_POOLS, or with a registered worker) with the GPU
    memory of its smallest GPU in MiB (None: unknown, or CPU workers)."""
    rows = session.execute(
        select(Worker.pool, func.min(Worker.gpu_memory_mb)).group_by(Worker.pool)
    ).all()
    known: dict[str, int | None] = dict(declared or {})
    for pool, memory in rows:
        given = known.get(pool)
        known[pool] = memory if given is None else (given if memory is None else min(given, memory))
    return known


def validate_pool_name(pool: str) -> str:
    if not POOL_NAME.match(pool):
        raise InvalidRequest(
            f"Invalid pool name '{pool}': lowercase letters, digits, '-', "
            "'_' and '.', at most 64 characters",
            param="pool",
            code="invalid_pool",
        )
    return pool


def choose_pool(
    session: Session,
    model: str,
    requested: str | None = None,
    declared: Mapping[str, int | None] | None = None,
) -> str:
    """The pool a new job of ``model`` goes to (see the module docstring for the rule);
    ``declared`` are the DORADO_POOLS."""
    capacities = pool_capacities(session, declared)
    if requested is not None:
        validate_pool_name(requested)
        if requested != DEFAULT_POOL and requested not in capacities:
            known = ", ".join(sorted({DEFAULT_POOL, *capacities}))
            raise InvalidRequest(
                f"Unknown pool '{requested}'. Known pools: {known}",
                param="pool",
                code="unknown_pool",
            )
        return requested
    need = estimated_gpu_memory_mb(model)
    if need is None:
        return DEFAULT_POOL
    fitting = [
        (memory, pool)
        for pool, memory in capacities.items()
        if memory is not None and memory >= need
    ]
    return min(fitting)[1] if fitting else DEFAULT_POOL
