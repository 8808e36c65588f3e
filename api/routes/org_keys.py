"""``/v1/organization/api_keys``: an organization's own admins manage its keys (the
``admin`` scope is enforced centrally in ``api.auth``; other organizations' keys are 404)."""

from __future__ import annotations

from flask import Blueprint, g

from api.audit import audit
from api.context import db
from api.limits import key_limit
from api.request_body import json_object
from api.serializers import page
from core.errors import InvalidRequest
from core.tenancy import auth

bp = Blueprint("org_keys", __name__, url_prefix="/v1/organization")


@bp.get("/api_keys")
def list_keys():
    return page([auth.key_dict(k) for k in auth.list_keys(db(), g.org_id)], False, ids=True)


@bp.post("/api_keys")
def create_key():
    """A new key of the caller's organization; its secret (``key``) is shown only here."""
    body = json_object()
    name, scope = body.get("name", ""), body.get("scope", "member")
    if not isinstance(name, str) or not isinstance(scope, str):
        raise InvalidRequest(
            "'name' and 'scope' must be strings", param="scope", code="invalid_value"
        )
    new = auth.create_key(db(), g.org_id, name=name, scope=scope, max_active_keys=key_limit())
    audit(
        "api_key.create",
        "api_key",
        new.row.id,
        details={"name": new.row.name, "scope": new.row.scope, "prefix": new.row.prefix},
    )
    return auth.key_dict(new.row, secret=new.secret)


@bp.get("/api_keys/<key_id>")
def retrieve_key(key_id: str):
    return auth.key_dict(auth.get_key(db(), key_id, org_id=g.org_id))


@bp.delete("/api_keys/<key_id>")
def revoke_key(key_id: str):
    row = auth.revoke_key(db(), key_id, org_id=g.org_id)
    audit("api_key.revoke", "api_key", row.id, details={"prefix": row.prefix})
    return auth.key_dict(row)
