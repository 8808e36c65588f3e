"""Request-body parsing shared by the JSON endpoints."""

from __future__ import annotations

from typing import Any

from flask import request

from core.errors import InvalidRequest


def json_object() -> dict[str, Any]:
    """The request's JSON body, which must be an object (400 otherwise)."""
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise InvalidRequest(
            "The request body must be a JSON object (Content-Type: application/json)"
        )
    return body
