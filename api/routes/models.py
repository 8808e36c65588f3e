"""``/v1/models``: base models and the caller's fine-tuned models."""

from __future__ import annotations

from flask import Blueprint, g

from api.context import db
from api.serializers import model_object, page
from core.catalog import lookup as catalog

bp = Blueprint("models", __name__, url_prefix="/v1/models")


@bp.get("")
def list_models():
    return page([model_object(m) for m in catalog.visible_models(db(), g.org_id)], False)


@bp.get("/<path:model>")
def retrieve_model(model: str):
    return model_object(catalog.get_visible_model(db(), g.org_id, model))


@bp.delete("/<path:model>")
def delete_model(model: str):
    catalog.delete_fine_tuned_model(db(), g.org_id, model)
    return {"id": model, "object": "model", "deleted": True}
