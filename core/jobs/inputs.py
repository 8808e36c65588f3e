"""What a job request resolves to before anything is written: its base model and adapter
(through the parent job of an ``ft:`` model), its usable files, and its method's resolved
hyperparameters. Job creation (``core.jobs.lifecycle``) and the estimate (``core.jobs.estimate``)
share these, so an estimate accepts and refuses exactly what creation does."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from core.catalog import lookup as catalog
from core.db.models import File, Job, Model
from core.errors import InvalidFile, InvalidRequest, NotFound
from core.jobs.hyperparams import (
    AdapterConfig,
    DpoHyperparameters,
    Hyperparameters,
    resolve,
    resolve_dpo,
)
from core.jobs.status import JobStatus
from core.storage.datasets import check_format_for_method
from core.storage.files import get_file

TRAINABLE_METHODS = ("supervised", "dpo")
"""The ``method.type`` values the engine trains (OpenAI's ``reinforcement`` is not one)."""
FINE_TUNED_PREFIX = "ft:"
ROWS_PER_EXAMPLE = {"supervised": 1, "dpo": 2}
"""Rows a training example puts in a batch: a DPO pair is two (chosen and rejected share a
micro-batch, the pair's loss needs both)."""


def check_trainable(method: str) -> None:
    """A 400 for a ``method.type`` the engine does not train."""
    if method not in TRAINABLE_METHODS:
        raise InvalidRequest(
            f"method.type '{method}' is not supported yet; use "
            + " or ".join(f"'{m}'" for m in TRAINABLE_METHODS),
            param="method.type",
            code="unsupported_method",
        )


@dataclass(frozen=True)
class Origin:
    """Where a job starts: the base model the planner sizes, the adapter it trains, and the
    parent job when it continues a fine-tuned model."""

    base: Model
    adapter: AdapterConfig
    parent: Job | None = None


def resolve_origin(
    session: Session, org_id: str, model: str, asked: AdapterConfig | None
) -> Origin:
    """The base model and adapter of a job on ``model``; ``asked`` is the request's adapter,
    None when not given (a fresh job trains the default; a continued one its parent's).

    ``model: "ft:..."`` continues fine-tuning: the base model and the adapter are the parent
    job's; an unknown, foreign or unfinished one is a 400 ``model_not_available``."""
    if not model.startswith(FINE_TUNED_PREFIX):
        return Origin(base_model(session, model), asked or AdapterConfig())
    parent = _parent_job(session, org_id, model)
    return Origin(base_model(session, parent.model), _continued_adapter(parent, asked), parent)


def base_model(session: Session, name: str) -> Model:
    """The job's base model, which must be in the catalogue: OpenAI answers 400
    ``model_not_available`` for one it does not offer."""
    try:
        return catalog.get_base_model(session, name)
    except NotFound as exc:
        raise InvalidRequest(exc.message, param="model", code="model_not_available") from exc


def _parent_job(session: Session, org_id: str, name: str) -> Job:
    """The succeeded job of the caller's organization that produced the model ``name``
    (continued fine-tuning starts from its adapter)."""
    row = session.get(Model, name)
    parent = session.get(Job, row.job_id) if row is not None and row.job_id else None
    if (
        row is None
        or row.kind != "fine-tuned"
        or row.organization_id != org_id
        or parent is None
        or parent.organization_id != org_id
    ):
        raise InvalidRequest(
            f"The fine-tuned model '{name}' does not exist in your organization",
            param="model",
            code="model_not_available",
        )
    if parent.status != JobStatus.SUCCEEDED or not parent.adapter_key:
        raise InvalidRequest(
            f"The fine-tuned model '{name}' has no adapter to continue from",
            param="model",
            code="model_not_available",
        )
    return parent


def _continued_adapter(parent: Job, asked: AdapterConfig | None) -> AdapterConfig:
    """A continued job trains its parent's adapter: same type, rank and targets."""
    inherited = AdapterConfig(**parent.adapter)
    if asked is not None and (asked.type, asked.r) != (inherited.type, inherited.r):
        raise InvalidRequest(
            f"A job continuing '{parent.fine_tuned_model}' trains its {inherited.type} adapter "
            f"of rank {inherited.r}; got adapter type '{asked.type}', rank {asked.r}",
            param="adapter",
        )
    return inherited


def usable_file(
    session: Session, org_id: str, file_id: str, param: str, method: str = "supervised"
) -> File:
    """The caller's processed fine-tune file ``file_id``, in the format ``method`` trains on."""
    try:
        row = get_file(session, org_id, file_id, param=param)
    except NotFound as exc:
        raise NotFound(
            f"Invalid file ID: {file_id}. No such file.", param=param, code="file_not_found"
        ) from exc
    if row.purpose != "fine-tune":
        raise InvalidFile(
            f"File {file_id} has purpose '{row.purpose}', not 'fine-tune'", param=param
        )
    if row.status != "processed":
        raise InvalidFile(f"File {file_id} is not ready (status '{row.status}')", param=param)
    mismatch = check_format_for_method((row.stats or {}).get("format"), method)
    if mismatch:
        raise InvalidFile(f"File {file_id} cannot train this job: {mismatch}", param=param)
    return row


def method_settings(
    method: str, hyperparameters: Hyperparameters, n_examples: int
) -> tuple[dict[str, int | float], dict[str, Any]]:
    """The resolved hyperparameters (OpenAI's top-level three) and the ``method`` object
    echoed by the job, its hyperparameters resolved (``beta`` too for dpo). For dpo,
    ``n_examples`` counts pairs."""
    if method == "dpo":
        hyper = DpoHyperparameters(**hyperparameters.model_dump())
        resolved = resolve_dpo(hyper, n_examples)
        top = {k: v for k, v in resolved.items() if k != "beta"}
        return top, {"type": "dpo", "dpo": {"hyperparameters": resolved}}
    top = resolve(hyperparameters, n_examples)
    return top, {"type": "supervised", "supervised": {"hyperparameters": top}}


def batch_rows(method: str, batch_size: int) -> int:
    """The rows in a step's batch, as the memory planner counts them."""
    return batch_size * ROWS_PER_EXAMPLE[method]
