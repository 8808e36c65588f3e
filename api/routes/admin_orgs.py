"""``/v1/admin/organizations`` and ``/v1/admin/api_keys``: operators manage organizations,
their quotas and their API keys. Access (an ``admin`` key of an operator organization) is
enforced centrally in ``api.auth``."""

from __future__ import annotations

from typing import Any

from flask import Blueprint

from api.audit import audit
from api.context import db, dorado
from api.limits import key_limit
from api.request_body import json_object
from api.serializers import page
from core.errors import InvalidRequest
from core.tenancy import auth

bp = Blueprint("admin_orgs", __name__, url_prefix="/v1/admin")


def _quota_changes(body: dict[str, Any]) -> dict[str, Any]:
    unknown = set(body) - set(auth.QUOTA_FIELDS) - {"name", "is_operator"}
    if unknown:
        field = sorted(unknown)[0]
        raise InvalidRequest(f"Unknown field '{field}'", param=field, code="invalid_value")
    return {field: body[field] for field in auth.QUOTA_FIELDS if field in body}


@bp.get("/organizations")
def list_organizations():
    session = db()
    counts = auth.active_key_counts(session)
    return page(
        [
            auth.organization_dict(o, active_keys=counts.get(o.id, 0))
            for o in auth.list_organizations(session)
        ],
        False,
    )


@bp.post("/organizations")
def create_organization():
    body = json_object()
    name = body.get("name")
    if not isinstance(name, str) or not name.strip() or len(name) > 200:
        raise InvalidRequest(
            "'name' must be a non-empty string of at most 200 characters",
            param="name",
            code="invalid_value",
        )
    is_operator = body.get("is_operator", False)
    if not isinstance(is_operator, bool):
        raise InvalidRequest(
            "'is_operator' must be a boolean", param="is_operator", code="invalid_value"
        )
    quotas = _quota_changes(body)
    session = db()
    org = auth.create_organization(
        session,
        name.strip(),
        is_operator=is_operator,
        max_queued_jobs=dorado().settings.default_max_queued_jobs or None,
    )
    auth.set_quotas(session, org.id, **quotas)
    audit(
        "organization.create",
        "organization",
        org.id,
        organization_id=org.id,
        details={"name": org.name, "is_operator": is_operator, **quotas},
    )
    return auth.organization_dict(org, active_keys=0)


@bp.get("/organizations/<org_id>")
def retrieve_organization(org_id: str):
    session = db()
    org = auth.get_organization(session, org_id)
    return auth.organization_dict(org, active_keys=auth.active_key_counts(session).get(org.id, 0))


@bp.post("/organizations/<org_id>")
def update_organization(org_id: str):
    """Change quotas: ``max_running_jobs``, ``max_queued_jobs``, ``storage_quota_bytes``
    (null: unlimited)."""
    body = json_object()
    if "name" in body or "is_operator" in body:
        raise InvalidRequest(
            "Only quotas can be changed",
            param="name" if "name" in body else "is_operator",
            code="invalid_value",
        )
    quotas = _quota_changes(body)
    org = auth.set_quotas(db(), org_id, **quotas)
    audit("organization.set_quota", "organization", org.id, organization_id=org.id, details=quotas)
    return auth.organization_dict(org)


@bp.get("/organizations/<org_id>/api_keys")
def list_keys(org_id: str):
    session = db()
    auth.get_organization(session, org_id)
    return page([auth.key_dict(k) for k in auth.list_keys(session, org_id)], False, ids=True)


@bp.post("/organizations/<org_id>/api_keys")
def create_key(org_id: str):
    """A new key; its secret (``key``) is in this response only."""
    body = json_object()
    name, scope = body.get("name", ""), body.get("scope", "member")
    if not isinstance(name, str) or not isinstance(scope, str):
        raise InvalidRequest(
            "'name' and 'scope' must be strings", param="scope", code="invalid_value"
        )
    new = auth.create_key(db(), org_id, name=name, scope=scope, max_active_keys=key_limit())
    audit(
        "api_key.create",
        "api_key",
        new.row.id,
        organization_id=org_id,
        details={"name": new.row.name, "scope": new.row.scope, "prefix": new.row.prefix},
    )
    return auth.key_dict(new.row, secret=new.secret)


@bp.post("/api_keys/<key_id>/revoke")
@bp.delete("/api_keys/<key_id>")
def revoke_key(key_id: str):
    row = auth.revoke_key(db(), key_id)
    audit(
        "api_key.revoke",
        "api_key",
        row.id,
        organization_id=row.organization_id,
        details={"prefix": row.prefix},
    )
    return auth.key_dict(row)
