"""``/v1/webhook_endpoints``: an organization's webhook endpoints (the paths and shapes of
OpenAI's ``client.webhooks`` endpoints API) and their delivery log. Admin-scoped keys only;
another organization's endpoint or delivery is a 404 like a missing one."""

from __future__ import annotations

from flask import Blueprint, g, request

from api.audit import audit
from api.context import caller, db, dorado
from api.pagination import after_arg, limit_arg
from api.request_body import json_object
from api.serializers import page
from core.errors import InvalidRequest, PermissionDenied
from core.webhooks import endpoints as service
from core.webhooks.config import webhook_config

bp = Blueprint("webhooks", __name__, url_prefix="/v1")


@bp.before_request
def _admin_scope_only() -> None:
    if caller().scope != "admin":
        raise PermissionDenied(
            "Webhook endpoints need an API key with the 'admin' scope", code="insufficient_scope"
        )


@bp.get("/webhook_endpoints")
def list_endpoints():
    rows, has_more = service.list_endpoints(db(), g.org_id, limit=limit_arg(20), after=after_arg())
    return page([service.endpoint_dict(r) for r in rows], has_more, ids=True)


@bp.post("/webhook_endpoints")
def create_endpoint():
    """A new endpoint; its ``signing_secret`` (``whsec_...``) is in this response only."""
    body = json_object()
    unknown = sorted(set(body) - {"url", "event_types", "name"})
    if unknown:
        raise InvalidRequest(f"Unknown field(s): {', '.join(unknown)}", param=unknown[0])
    new = service.create_endpoint(
        db(),
        service.secret_box(dorado().settings),
        g.org_id,
        url=body.get("url"),
        event_types=body.get("event_types"),
        name=body.get("name", ""),
        allow_private=webhook_config(dorado().settings).allow_private,
    )
    audit(
        "webhook_endpoint.create",
        "webhook_endpoint",
        new.row.id,
        details={"url": new.row.url, "event_types": new.row.event_types},
    )
    return service.endpoint_dict(new.row, secret=new.secret)


@bp.get("/webhook_endpoints/<endpoint_id>")
def retrieve_endpoint(endpoint_id: str):
    return service.endpoint_dict(service.get_endpoint(db(), g.org_id, endpoint_id))


@bp.post("/webhook_endpoints/<endpoint_id>")
def update_endpoint(endpoint_id: str):
    """Change ``name``, ``url``, ``event_types``; ``enabled: false`` disables it."""
    changes = json_object()
    row = service.update_endpoint(
        db(),
        g.org_id,
        endpoint_id,
        changes,
        allow_private=webhook_config(dorado().settings).allow_private,
    )
    audit("webhook_endpoint.update", "webhook_endpoint", row.id, details=changes)
    return service.endpoint_dict(row)


@bp.delete("/webhook_endpoints/<endpoint_id>")
def delete_endpoint(endpoint_id: str):
    row = service.delete_endpoint(db(), g.org_id, endpoint_id)
    audit("webhook_endpoint.delete", "webhook_endpoint", row.id, details={"url": row.url})
    return {"id": row.id, "object": "webhook_endpoint.deleted", "deleted": True}


@bp.get("/webhook_endpoints/<endpoint_id>/deliveries")
def list_deliveries(endpoint_id: str):
    """The endpoint's delivery log, newest first: status, attempts, last status code and
    latency, next retry."""
    endpoint = service.get_endpoint(db(), g.org_id, endpoint_id)
    rows, has_more = service.list_deliveries(
        db(),
        endpoint,
        limit=limit_arg(20),
        after=after_arg(),
        status=request.args.get("status") or None,
    )
    return page([service.delivery_dict(d, e) for d, e in rows], has_more, ids=True)


@bp.post("/webhook_deliveries/<delivery_id>/resend")
def resend_delivery(delivery_id: str):
    """Send a delivery again now (same ``webhook-id``, a fresh retry budget)."""
    delivery, event = service.resend_delivery(db(), g.org_id, delivery_id)
    audit("webhook_delivery.resend", "webhook_delivery", delivery.id)
    return service.delivery_dict(delivery, event)
