"""``/v1/organization/integrations``: the organization's experiment-tracker credentials (its
Weights & Biases API key), set by its admins (``/v1/organization/...`` needs the ``admin``
scope, enforced in ``api.auth``). The key is write-only: answers carry a hint."""

from __future__ import annotations

from flask import Blueprint, g

from api.audit import audit
from api.context import db, dorado
from api.request_body import json_object
from core.errors import InvalidRequest
from core.tenancy import tracker_credentials as service

bp = Blueprint("org_integrations", __name__, url_prefix="/v1/organization")

SETTABLE = {"wandb_api_key"}


@bp.get("/integrations")
def get_integrations():
    return service.integrations_settings_dict(db(), g.org_id)


@bp.post("/integrations")
def update_integrations():
    """``{"wandb_api_key": "..."}`` stores the key sealed; ``null`` removes it."""
    body = json_object()
    unknown = sorted(set(body) - SETTABLE)
    if unknown or not body:
        raise InvalidRequest(
            f"Unknown field(s): {', '.join(unknown)}" if unknown else "Give 'wandb_api_key'",
            param=unknown[0] if unknown else "wandb_api_key",
        )
    box = service.credentials_box(dorado().settings)
    service.set_wandb_api_key(db(), box, g.org_id, body["wandb_api_key"])
    audit(
        "organization.integrations.update",
        "organization",
        g.org_id,
        details={"wandb_api_key": "removed" if body["wandb_api_key"] is None else "set"},
    )
    return service.integrations_settings_dict(db(), g.org_id)
