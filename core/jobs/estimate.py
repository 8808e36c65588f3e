"""Pre-flight estimate of a fine-tuning job: steps, tokens and time, before it is created.

Token counts are approximate: ``total_chars / 4`` of the training file (about four characters
per token for English text with BPE tokenizers); the file is not tokenized. Time comes from a
per-model throughput constant measured on a 2-core CPU with no GPU, so it is an order of
magnitude, not a promise: a GPU worker is much faster.

The memory side comes from the planner (``core.jobs.resources``), as at creation: the pool,
the GPUs and the estimated peak MiB per device (``resources``), and the training options
resolved for the model (``training``). A job that fits no pool is refused here too.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy.orm import Session

from core.db.models import File
from core.jobs.hyperparams import AdapterConfig, Hyperparameters, TrainingOptions
from core.jobs.inputs import (
    batch_rows,
    check_trainable,
    method_settings,
    resolve_origin,
    usable_file,
)
from core.jobs.resources import plan_job

CHARS_PER_TOKEN = 4
# Training throughput (tokens per second, forward + backward) on a 2-core CPU. The tiny random
# model is dominated by per-step overhead; SmolLM2-135M trains at ~150 tokens/s there.
TOKENS_PER_SECOND: dict[str, float] = {
    "tiny-random-llama": 5000.0,
    "smollm2-135m-instruct": 150.0,
}
DEFAULT_TOKENS_PER_SECOND = 150.0
# Loading the base model, building the adapter and writing the result, per job.
STARTUP_SECONDS: dict[str, float] = {"tiny-random-llama": 5.0, "smollm2-135m-instruct": 15.0}
DEFAULT_STARTUP_SECONDS = 15.0
# A forward pass without gradients costs about a third of a training step per token (the
# backward pass is about twice the forward).
FORWARD_SHARE = 1 / 3


@dataclass(frozen=True)
class Estimate:
    """What a job would do, as far as can be known without tokenizing the data."""

    model: str
    # The ``ft:`` model continued from (``model`` is then its base), else None.
    parent: str | None
    # The job's ``method`` with its hyperparameters resolved, as the job would echo it.
    method: dict[str, Any]
    example_count: int
    validation_example_count: int | None
    hyperparameters: dict[str, int | float]
    adapter: dict[str, Any]
    steps_per_epoch: int
    total_steps: int
    estimated_tokens_per_epoch: int
    estimated_total_tokens: int
    tokens_per_second: float
    estimated_seconds: int
    pool: str
    training: dict[str, Any]
    resources: dict[str, Any] | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "object": "fine_tuning.job.estimate",
            **asdict(self),
            "tokens_are_estimated": True,
            "note": (
                f"Tokens are estimated as characters / {CHARS_PER_TOKEN}; the time assumes "
                f"{self.tokens_per_second:g} tokens/s for {self.model} on a CPU worker."
            ),
        }


def estimate_job(
    session: Session,
    org_id: str,
    *,
    model: str,
    training_file: str,
    validation_file: str | None,
    hyperparameters: Hyperparameters,
    adapter: AdapterConfig | None,
    method: str = "supervised",
    training: TrainingOptions | None = None,
    max_seq_length: int | None = None,
    pool: str | None = None,
    declared_pools: Mapping[str, int | None] | None = None,
    precision: str | None = None,
    nodes: int = 1,
) -> Estimate:
    """Estimate a job from the inputs of ``core.jobs.lifecycle.create_job``; nothing is written.

    Model, adapter, files and method are resolved and checked as creation does
    (``core.jobs.inputs``): an ``ft:`` model estimates its parent's base model and adapter.
    A DPO job's examples are its pairs, each two rows (chosen and rejected) for the planner
    and the token count."""
    check_trainable(method)
    origin = resolve_origin(session, org_id, model, adapter)
    base = origin.base.id
    training_row = usable_file(session, org_id, training_file, "training_file", method)
    validation = (
        usable_file(session, org_id, validation_file, "validation_file", method)
        if validation_file
        else None
    )
    examples = training_row.example_count or 0
    hyper, method_object = method_settings(method, hyperparameters, examples)
    n_epochs, batch_size = int(hyper["n_epochs"]), int(hyper["batch_size"])
    steps_per_epoch = max(1, math.ceil(examples / batch_size))
    planned = plan_job(
        session,
        origin.base,
        adapter=origin.adapter,
        training=training or TrainingOptions(),
        max_seq_length=max_seq_length,
        batch_size=batch_rows(method, batch_size),
        requested_pool=pool,
        declared_pools=declared_pools,
        precision=precision,
        nodes=nodes,
    )
    tokens_per_epoch = _tokens_per_epoch(training_row, method)
    total_tokens = tokens_per_epoch * n_epochs
    speed = TOKENS_PER_SECOND.get(base, DEFAULT_TOKENS_PER_SECOND)
    # DPO's reference log-probs: one forward pass over the rows, once per run.
    reference_tokens = tokens_per_epoch if method == "dpo" else 0
    seconds = (
        STARTUP_SECONDS.get(base, DEFAULT_STARTUP_SECONDS)
        + (total_tokens + reference_tokens * FORWARD_SHARE) / speed
    )
    return Estimate(
        model=base,
        parent=model if origin.parent is not None else None,
        method=method_object,
        example_count=examples,
        validation_example_count=validation.example_count if validation else None,
        hyperparameters=hyper,
        adapter=origin.adapter.model_dump(),
        steps_per_epoch=steps_per_epoch,
        total_steps=steps_per_epoch * n_epochs,
        estimated_tokens_per_epoch=tokens_per_epoch,
        estimated_total_tokens=total_tokens,
        tokens_per_second=speed,
        estimated_seconds=math.ceil(seconds),
        pool=planned.pool,
        training=planned.training,
        resources=planned.resources,
    )


def _tokens_per_epoch(row: File, method: str) -> int:
    """Tokens trained on per epoch, from the upload's character count. A preference line's
    characters are its input and both outputs; its two rows each hold the input, so the
    input is counted twice (the upload's ``prompt_chars``)."""
    stats = row.stats or {}
    chars = int(stats.get("total_chars") or 0)
    if method == "dpo":
        chars += int(stats.get("prompt_chars") or 0)
    return math.ceil(chars / CHARS_PER_TOKEN)
