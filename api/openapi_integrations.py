"""OpenAPI paths and schemas of the organization's tracker credentials
(``/v1/organization/integrations``), merged into ``api.openapi``'s document. A job's
``integrations`` are described by ``api.schemas.JobCreateRequest`` itself."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from pydantic import BaseModel, Field

from api.openapi_models import ClosedObject, OpenObject


class WandbCredentials(OpenObject):
    api_key_set: bool
    api_key_hint: str | None = Field(description='"..." and the last 4 characters, or null')


class OrganizationIntegrations(OpenObject):
    object: Literal["organization.integrations"]
    wandb: WandbCredentials


class OrganizationIntegrationsUpdate(ClosedObject):
    wandb_api_key: str | None = Field(
        description="The Weights & Biases API key the workers log this organization's "
        "wandb integrations with (stored encrypted, never shown again); null removes it",
        max_length=256,
    )


SCHEMAS: tuple[type[BaseModel], ...] = (
    WandbCredentials,
    OrganizationIntegrations,
    OrganizationIntegrationsUpdate,
)


def paths(
    op: Callable[..., dict[str, Any]],
    json_body: Callable[[type[BaseModel]], dict],
    path_param: Callable[[str], dict],
    query: Callable[..., dict],
) -> dict[str, Any]:
    """The paths, built with ``api.openapi``'s helpers (passed in: no import cycle)."""
    return {
        "/v1/organization/integrations": {
            "get": op(
                "Your organization's tracker credentials, as hints (admin scope)",
                OrganizationIntegrations,
                errors=(401,),
            ),
            "post": op(
                "Set or remove your organization's Weights & Biases API key (admin scope)",
                OrganizationIntegrations,
                body={"required": True, **json_body(OrganizationIntegrationsUpdate)},
                errors=(400, 401),
            ),
        },
    }
