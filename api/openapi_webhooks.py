"""OpenAPI paths and schemas of the webhook endpoints (``/v1/webhook_endpoints``, shaped as
OpenAI's) and their delivery log, merged into ``api.openapi``'s document."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from api.openapi_models import ClosedObject, OpenObject
from core.webhooks.urls import MAX_URL_LENGTH

EventType = Literal[
    "fine_tuning.job.succeeded",
    "fine_tuning.job.failed",
    "fine_tuning.job.cancelled",
    "fine_tuning.job.paused",
    "fine_tuning.job.checkpoint",
]


class WebhookEndpointObject(OpenObject):
    id: str
    object: Literal["webhook_endpoint"]
    name: str
    url: str
    event_types: list[str]
    enabled: bool
    signing_secret_hint: str
    created_at: int
    updated_at: int
    signing_secret: str | None = Field(
        None, description="The whsec_ signing secret: only in the creation response"
    )


class WebhookEndpointList(OpenObject):
    object: Literal["list"]
    data: list[WebhookEndpointObject]
    has_more: bool
    first_id: str | None
    last_id: str | None


class WebhookEndpointCreate(ClosedObject):
    url: str = Field(
        max_length=MAX_URL_LENGTH,
        description="http(s) URL; non-public addresses are refused unless the operator allows them",
    )
    event_types: list[EventType] = Field(min_length=1)
    name: str = Field("", max_length=200)


def _absent_means_unchanged(schema: dict[str, Any]) -> None:
    """Optional, but not nullable: an absent field is left as it is (no null default)."""
    for name, prop in schema.get("properties", {}).items():
        prop.pop("default", None)
        not_null = [s for s in prop.pop("anyOf", []) if s.get("type") != "null"]
        if not_null:
            schema["properties"][name] = {**not_null[0], **prop}


class WebhookEndpointUpdate(ClosedObject):
    """Fields to change; an absent field is left as it is."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=_absent_means_unchanged)

    url: str | None = Field(None, max_length=MAX_URL_LENGTH)
    event_types: list[EventType] | None = Field(None, min_length=1)
    name: str | None = Field(None, max_length=200)
    enabled: bool | None = Field(None, description="false: no deliveries until enabled again")


class WebhookEndpointDeleted(OpenObject):
    id: str
    object: Literal["webhook_endpoint.deleted"]
    deleted: bool


class WebhookDeliveryObject(OpenObject):
    id: str = Field(description="Also the webhook-id header, the same on every attempt")
    object: Literal["webhook_endpoint.delivery"]
    endpoint_id: str
    event_id: str
    event_type: str
    job_id: str
    status: Literal["pending", "succeeded", "failed"]
    attempts: int
    last_status_code: int | None
    last_latency_ms: int | None
    last_error: str | None
    response_excerpt: str | None
    next_attempt_at: int | None
    last_attempt_at: int | None
    delivered_at: int | None
    created_at: int


class WebhookDeliveryList(OpenObject):
    object: Literal["list"]
    data: list[WebhookDeliveryObject]
    has_more: bool
    first_id: str | None
    last_id: str | None


SCHEMAS: tuple[type[BaseModel], ...] = (
    WebhookEndpointObject,
    WebhookEndpointList,
    WebhookEndpointCreate,
    WebhookEndpointUpdate,
    WebhookEndpointDeleted,
    WebhookDeliveryObject,
    WebhookDeliveryList,
)


def paths(
    op: Callable[..., dict[str, Any]],
    json_body: Callable[[type[BaseModel]], dict],
    path_param: Callable[[str], dict],
    query: Callable[..., dict],
) -> dict[str, Any]:
    """The paths, built with ``api.openapi``'s helpers (passed in: no import cycle)."""
    endpoint_id, delivery_id = path_param("endpoint_id"), path_param("delivery_id")
    limit = query("limit", {"type": "integer", "minimum": 1, "maximum": 100})
    after = query("after", {"type": "string"})

    def body(model: type[BaseModel]) -> dict[str, Any]:
        return {"required": True, **json_body(model)}

    return {
        "/v1/webhook_endpoints": {
            "get": op(
                "Your organization's webhook endpoints (admin scope)",
                WebhookEndpointList,
                params=[after, limit],
                errors=(400, 401),
            ),
            "post": op(
                "Create a webhook endpoint; its signing secret is in this response only",
                WebhookEndpointObject,
                body=body(WebhookEndpointCreate),
                errors=(400, 401),
            ),
        },
        "/v1/webhook_endpoints/{endpoint_id}": {
            "get": op("One webhook endpoint", WebhookEndpointObject, params=[endpoint_id]),
            "post": op(
                "Change a webhook endpoint (enabled: false disables it)",
                WebhookEndpointObject,
                params=[endpoint_id],
                body=body(WebhookEndpointUpdate),
            ),
            "delete": op(
                "Delete a webhook endpoint and its delivery log",
                WebhookEndpointDeleted,
                params=[endpoint_id],
            ),
        },
        "/v1/webhook_endpoints/{endpoint_id}/deliveries": {
            "get": op(
                "An endpoint's delivery log, newest first",
                WebhookDeliveryList,
                params=[
                    endpoint_id,
                    after,
                    limit,
                    query("status", {"type": "string", "enum": ["pending", "succeeded", "failed"]}),
                ],
            ),
        },
        "/v1/webhook_deliveries/{delivery_id}/resend": {
            "post": op(
                "Send a delivery again now (same webhook-id, fresh retry budget)",
                WebhookDeliveryObject,
                params=[delivery_id],
            ),
        },
    }
