"""OpenAPI paths and schemas of the organization, API key and audit endpoints
(``/v1/admin/organizations``, ``/v1/admin/api_keys``, ``/v1/admin/audit``,
``/v1/organization/api_keys``), merged into ``api.openapi``'s document."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from pydantic import BaseModel, Field

from api.openapi_models import ClosedObject, OpenObject

Quota = int | None


class OrganizationObject(OpenObject):
    id: str
    object: Literal["organization"]
    name: str
    created_at: int
    is_operator: bool
    max_running_jobs: Quota
    max_queued_jobs: Quota
    storage_quota_bytes: Quota
    active_keys: int | None = None


class OrganizationList(OpenObject):
    object: Literal["list"]
    data: list[OrganizationObject]
    has_more: bool


class OrganizationCreate(ClosedObject):
    name: str = Field(min_length=1, max_length=200)
    is_operator: bool = False
    max_running_jobs: Quota = Field(None, ge=0, le=2**31 - 1)
    max_queued_jobs: Quota = Field(None, ge=0, le=2**31 - 1)
    storage_quota_bytes: Quota = Field(None, ge=0, le=2**63 - 1)


class OrganizationUpdate(ClosedObject):
    """Quotas to change; null removes the limit, an absent field is left as it is."""

    max_running_jobs: Quota = Field(None, ge=0, le=2**31 - 1)
    max_queued_jobs: Quota = Field(None, ge=0, le=2**31 - 1)
    storage_quota_bytes: Quota = Field(None, ge=0, le=2**63 - 1)


class ApiKeyObject(OpenObject):
    id: str
    object: Literal["organization.api_key"]
    organization_id: str
    name: str
    prefix: str
    scope: Literal["admin", "member", "read-only"]
    created_at: int
    last_used_at: int | None
    revoked_at: int | None
    key: str | None = Field(None, description="The secret: only in the creation response")


class ApiKeyList(OpenObject):
    object: Literal["list"]
    data: list[ApiKeyObject]
    has_more: bool
    first_id: str | None
    last_id: str | None


class ApiKeyCreate(ClosedObject):
    name: str = Field("", max_length=200)
    scope: Literal["admin", "member", "read-only"] = "member"


class AuditEventObject(OpenObject):
    id: str
    object: Literal["audit.event"]
    created_at: int
    organization_id: str | None
    actor: str
    api_key_id: str | None
    action: str
    object_type: str
    object_id: str
    ip: str | None
    details: dict[str, Any] | None


class AuditEventList(OpenObject):
    object: Literal["list"]
    data: list[AuditEventObject]
    has_more: bool
    first_id: str | None
    last_id: str | None


SCHEMAS: tuple[type[BaseModel], ...] = (
    OrganizationObject,
    OrganizationList,
    OrganizationCreate,
    OrganizationUpdate,
    ApiKeyObject,
    ApiKeyList,
    ApiKeyCreate,
    AuditEventObject,
    AuditEventList,
)


def paths(
    op: Callable[..., dict[str, Any]],
    json_body: Callable[[type[BaseModel]], dict],
    path_param: Callable[[str], dict],
    query: Callable[..., dict],
) -> dict[str, Any]:
    """The paths, built with ``api.openapi``'s helpers (passed in: no import cycle)."""
    org_id, key_id = path_param("org_id"), path_param("key_id")

    def body(model: type[BaseModel]) -> dict[str, Any]:
        return {"required": True, **json_body(model)}

    return {
        "/v1/admin/organizations": {
            "get": op(
                "Operators: every organization with its quotas", OrganizationList, errors=(401,)
            ),
            "post": op(
                "Operators: create an organization",
                OrganizationObject,
                body=body(OrganizationCreate),
                errors=(400, 401),
            ),
        },
        "/v1/admin/organizations/{org_id}": {
            "get": op("Operators: one organization", OrganizationObject, params=[org_id]),
            "post": op(
                "Operators: change an organization's quotas",
                OrganizationObject,
                params=[org_id],
                body=body(OrganizationUpdate),
            ),
        },
        "/v1/admin/organizations/{org_id}/api_keys": {
            "get": op(
                "Operators: an organization's API keys (never their secrets)",
                ApiKeyList,
                params=[org_id],
            ),
            "post": op(
                "Operators: create an API key; its secret is in this response only",
                ApiKeyObject,
                params=[org_id],
                body=body(ApiKeyCreate),
            ),
        },
        "/v1/admin/api_keys/{key_id}": {
            "delete": op("Operators: revoke an API key", ApiKeyObject, params=[key_id]),
        },
        "/v1/admin/api_keys/{key_id}/revoke": {
            "post": op("Operators: revoke an API key", ApiKeyObject, params=[key_id]),
        },
        "/v1/admin/audit": {
            "get": op(
                "Operators: the audit log, newest first",
                AuditEventList,
                params=[
                    query("organization_id", {"type": "string"}),
                    query("action", {"type": "string"}),
                    query("object_id", {"type": "string"}),
                    query("since", {"type": "integer", "minimum": 0}, "unix seconds"),
                    query("after", {"type": "string"}),
                    query("limit", {"type": "integer", "minimum": 1, "maximum": 1000}),
                ],
                errors=(400, 401),
            ),
        },
        "/v1/organization/api_keys": {
            "get": op("Your organization's API keys (admin scope)", ApiKeyList, errors=(401,)),
            "post": op(
                "Create an API key in your organization; its secret is in this response only",
                ApiKeyObject,
                body=body(ApiKeyCreate),
                errors=(400, 401),
            ),
        },
        "/v1/organization/api_keys/{key_id}": {
            "get": op("One of your organization's API keys", ApiKeyObject, params=[key_id]),
            "delete": op(
                "Revoke one of your organization's API keys", ApiKeyObject, params=[key_id]
            ),
        },
    }
