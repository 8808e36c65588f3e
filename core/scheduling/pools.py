"""Worker pools: which pool a job runs in.

The rule (docs/operations.md "Pools"):

1. A job that names a pool (the ``pool`` extra field on creation) goes there; the name must be
   ``default`` or a known pool: declared in ``DORADO_POOLS`` or with a registered worker.
2. Otherwise the memory planner (``core.jobs.planner``) sizes the job from the base model's
   ``config.json`` and the job's settings, and the job goes to the known GPU pool with the
   *smallest* GPU memory that fits it (so big cards stay free for big models), with gradient
   checkpointing turned on if that is what makes it fit.
   A pool's registered workers tell how many GPUs a job gets there (the fewest any of them
   has, :func:`pool_gpus`); a job that fits none of its GPUs alone but fits sharded over them
   is planned with ``sharding`` "fsdp", which reaches the engine through the job's
   ``resources``.
3. A job that fits no GPU pool, when every known pool's GPU size is known, is refused
   (``InvalidRequest``, code ``job_too_large``) with what would make it fit. Otherwise (the
   model's architecture is unknown, some pool's size is unknown, e.g. CPU workers, or no pool
   is known at all) it goes to ``default``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from core.db.models import Worker
from core.errors import InvalidRequest
from core.jobs.planner import Architecture, Placement, PlanRequest, place
from core.scheduling.broker import DEFAULT_POOL

POOL_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")


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


def pool_gpus(session: Session) -> dict[str, int]:
    """Each pool with a registered GPU worker, with the fewest GPUs any of them has: what one
    job gets there (a worker trains a job on all its GPUs by default,
    ``DORADO_WORKER_GPUS_PER_JOB``)."""
    rows = session.execute(
        select(Worker.pool, func.min(Worker.gpus)).where(Worker.gpus > 0).group_by(Worker.pool)
    ).all()
    return {pool: int(count) for pool, count in rows}


def validate_pool_name(pool: str) -> str:
    if not POOL_NAME.match(pool):
        raise InvalidRequest(
            f"Invalid pool name '{pool}': lowercase letters, digits, '-', "
            "'_' and '.', at most 64 characters",
            param="pool",
            code="invalid_pool",
        )
    return pool


def check_requested_pool(capacities: Mapping[str, int | None], requested: str) -> str:
    """``requested`` if it is ``default`` or a known pool, else InvalidRequest naming them."""
    validate_pool_name(requested)
    if requested != DEFAULT_POOL and requested not in capacities:
        known = ", ".join(sorted({DEFAULT_POOL, *capacities}))
        raise InvalidRequest(
            f"Unknown pool '{requested}'. Known pools: {known}",
            param="pool",
            code="unknown_pool",
        )
    return requested


def choose_pool(
    session: Session,
    requested: str | None = None,
    declared: Mapping[str, int | None] | None = None,
    *,
    architecture: Architecture | None = None,
    request: PlanRequest | None = None,
) -> Placement:
    """Where a new job goes (see the module docstring for the rule), with its memory plan.

    ``declared`` are the DORADO_POOLS; ``architecture`` (None: unknown) and ``request`` describe
    the job to the planner. A requested pool is honoured as is; its plan is then made for the
    GPUs of that pool when their size is known.
    """
    capacities = pool_capacities(session, declared)
    gpus = pool_gpus(session)
    request = request or PlanRequest()
    if requested is not None:
        pool = check_requested_pool(capacities, requested)
        if architecture is None:
            return Placement(pool=pool, plan=None)
        size = capacities.get(pool)
        placed = place(architecture, request, {pool: size} if size is not None else {}, gpus)
        return Placement(pool=pool, plan=placed.plan, capacity_mib=size)
    if architecture is None:
        return Placement(pool=DEFAULT_POOL, plan=None)
    placed = place(architecture, request, capacities, gpus)
    return Placement(
        pool=placed.pool or DEFAULT_POOL, plan=placed.plan, capacity_mib=placed.capacity_mib
    )
