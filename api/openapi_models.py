"""Base classes of the pydantic models that describe responses and bodies in the OpenAPI
document: ``OpenObject`` for responses (Dorado may add fields, clients must ignore them),
``ClosedObject`` for request bodies (unknown fields are refused)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


def _drop_default(schema: dict[str, Any]) -> None:
    schema.pop("default", None)


def omittable(description: str) -> Any:
    """A response field that is absent rather than ``null`` when it has no value: OpenAI's
    spec types such fields as non-null, and strict generated clients follow the types."""
    return Field(None, description=description, json_schema_extra=_drop_default)


class OpenObject(BaseModel):
    model_config = ConfigDict(extra="allow")


class ClosedObject(BaseModel):
    model_config = ConfigDict(extra="forbid")
