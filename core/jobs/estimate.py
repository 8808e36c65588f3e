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

from core.catalog import lookup as catalog
from core.db.models import File
from core.errors import InvalidFile, NotFound
from core.jobs.hyperparams import AdapterConfig, Hyperparameters, TrainingOptions, resolve
from core.jobs.resources import plan_job
from core.storage.files import get_file

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


@dataclass(frozen=True)
class Estimate:
    """What a job would do, as far as can be known without tokenizing the data."""

    model: str
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


def _fine_tune_file(session: Session, org_id: str, file_id: str, param: str) -> File:
    try:
        row = get_file(session, org_id, file_id, param=param)
    except NotFound as exc:
        raise NotFound(
            f"Invalid file ID: {file_id}. No such file.", param=param, code="file_not_found"
        ) from exc
    if row.purpose != "fine-tune" or row.status != "processed":
        raise InvalidFile(
            f"File {file_id} cannot be used for fine-tuning (purpose "
            f"'{row.purpose}', status '{row.status}')",
            param=param,
        )
    return row


def estimate_job(
    session: Session,
    org_id: str,
    *,
    model: str,
    training_file: str,
    validation_file: str | None,
    hyperparameters: Hyperparameters,
    adapter: AdapterConfig,
    training: TrainingOptions | None = None,
    max_seq_length: int | None = None,
    pool: str | None = None,
    declared_pools: Mapping[str, int | None] | None = None,
    precision: str | None = None,
) -> Estimate:
    """Estimate a job from the inputs of ``core.jobs.lifecycle.create_job``; nothing is written."""
    base = catalog.get_base_model(session, model)
    training_row = _fine_tune_file(session, org_id, training_file, "training_file")
    validation = (
        _fine_tune_file(session, org_id, validation_file, "validation_file")
        if validation_file
        else None
    )
    examples = training_row.example_count or 0
    hyper = resolve(hyperparameters, examples)
    n_epochs, batch_size = int(hyper["n_epochs"]), int(hyper["batch_size"])
    steps_per_epoch = max(1, math.ceil(examples / batch_size))
    planned = plan_job(
        session,
        base,
        adapter=adapter,
        training=training or TrainingOptions(),
        max_seq_length=max_seq_length,
        batch_size=batch_size,
        requested_pool=pool,
        declared_pools=declared_pools,
        precision=precision,
    )
    total_chars = int((training_row.stats or {}).get("total_chars") or 0)
    tokens_per_epoch = math.ceil(total_chars / CHARS_PER_TOKEN)
    total_tokens = tokens_per_epoch * n_epochs
    speed = TOKENS_PER_SECOND.get(model, DEFAULT_TOKENS_PER_SECOND)
    seconds = STARTUP_SECONDS.get(model, DEFAULT_STARTUP_SECONDS) + total_tokens / speed
    return Estimate(
        model=model,
        example_count=examples,
        validation_example_count=validation.example_count if validation else None,
        hyperparameters=hyper,
        adapter=adapter.model_dump(),
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
