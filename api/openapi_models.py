"""Base classes of the pydantic models that describe responses and bodies in the OpenAPI
document: ``OpenObject`` for responses (Dorado may add fields, clients must ignore them),
``ClosedObject`` for request bodies (unknown fields are refused)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class OpenObject(BaseModel):
    model_config = ConfigDict(extra="allow")


class ClosedObject(BaseModel):
    model_config = ConfigDict(extra="forbid")
