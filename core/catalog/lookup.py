"""The model catalogue: built-in base models and the fine-tuned models jobs produce."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from core.db.models import Model
from core.errors import NotFound, PermissionDenied
from core.timeutil import utcnow

MODEL_STORE_PREFIX = "models"


@dataclass(frozen=True)
class BuiltinModel:
    name: str
    description: str
    # The architecture keys of the config.json the worker builds (worker.model_builders).
    config: dict[str, Any] = field(default_factory=dict)


BUILTIN_MODELS: tuple[BuiltinModel, ...] = (
    BuiltinModel(
        "smollm2-135m-instruct",
        "SmolLM2-135M-Instruct, a pretrained chat model (134.5 M parameters)",
        {
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
        },
    ),
    BuiltinModel(
        "tiny-random-llama",
        "A seeded 2-layer random Llama for fast tests and demos (learns nothing useful)",
        {
            "model_type": "llama",
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "head_dim": 16,
            "vocab_size": 49152,
            "tie_word_embeddings": True,
            "max_position_embeddings": 2048,
        },
    ),
)


def model_prefix(name: str) -> str:
    """Where a base model's weights live in the object store."""
    return f"{MODEL_STORE_PREFIX}/{name}"


def register_builtin_models(session: Session) -> None:
    """Insert a row for each built-in model that has none (weights are built lazily)."""
    for builtin in BUILTIN_MODELS:
        if session.get(Model, builtin.name) is None:
            session.add(
                Model(
                    id=builtin.name,
                    kind="base",
                    owned_by="dorado",
                    builtin=True,
                    source=f"builtin:{builtin.name}",
                    created_at=utcnow(),
                )
            )
    session.flush()


def architecture_config(model: Model) -> dict[str, Any] | None:
    """The config.json keys a base model is sized by (core.jobs.planner); None: unknown."""
    if model.config:
        return dict(model.config)
    builtin = next((b for b in BUILTIN_MODELS if b.name == model.id and model.builtin), None)
    return dict(builtin.config) if builtin else None


def visible_models(session: Session, org_id: str) -> list[Model]:
    """Base models plus the fine-tuned models of ``org_id``."""
    stmt = (
        select(Model)
        .where(or_(Model.kind == "base", Model.organization_id == org_id))
        .order_by(Model.created_at, Model.id)
    )
    return list(session.scalars(stmt))


def get_visible_model(session: Session, org_id: str, name: str) -> Model:
    model = session.get(Model, name)
    if model is None or (model.kind != "base" and model.organization_id != org_id):
        raise NotFound(f"The model '{name}' does not exist", param="model", code="model_not_found")
    return model


def get_base_model(session: Session, name: str) -> Model:
    model = session.get(Model, name)
    if model is None or model.kind != "base":
        known = ", ".join(m.id for m in session.scalars(select(Model).where(Model.kind == "base")))
        raise NotFound(
            f"The base model '{name}' does not exist or cannot be fine-tuned. Available: {known}",
            param="model",
            code="model_not_found",
        )
    return model


def delete_fine_tuned_model(session: Session, org_id: str, name: str) -> Model:
    """Remove a fine-tuned model from the catalogue (its job and adapter stay)."""
    model = get_visible_model(session, org_id, name)
    if model.kind == "base":
        raise PermissionDenied(
            f"'{name}' is a base model and cannot be deleted through the API",
            param="model",
            code="model_not_deletable",
        )
    session.delete(model)
    session.flush()
    return model
