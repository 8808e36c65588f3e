"""The JSON parser of every request body: bounded nesting and integer size.

Python's parser recurses once per nesting level (100,000 levels is a RecursionError, a 500)
and turns any run of digits into an int (thousands of digits cost quadratic time and are
refused by Python itself only past 4,300). No field of the API needs either: a clear 400 for
both, before any route sees the body.
"""

from __future__ import annotations

import json
from typing import Any

from flask.json.provider import DefaultJSONProvider

from core.errors import InvalidRequest

MAX_DEPTH = 64
# 2**63 has 19 digits: 40 leaves room for every integer a field takes, and no more.
MAX_INTEGER_DIGITS = 40


def _bounded_int(digits: str) -> int:
    if len(digits.lstrip("-")) > MAX_INTEGER_DIGITS:
        raise InvalidRequest(
            f"A number in the JSON body has more than {MAX_INTEGER_DIGITS} digits",
            code="invalid_json",
        )
    return int(digits)


def _check_depth(value: Any) -> None:
    # Iterative: a recursive walk would fail on the very input it guards against.
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children = list(item.values())
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > MAX_DEPTH:
            raise _too_deep()
        stack.extend((child, depth + 1) for child in children)


def _too_deep() -> InvalidRequest:
    return InvalidRequest(
        f"The JSON body is nested more than {MAX_DEPTH} levels deep", code="invalid_json"
    )


def parse(data: str | bytes) -> Any:
    """``json.loads`` with the bounds above; InvalidRequest (400) beyond them."""
    try:
        value = json.loads(data, parse_int=_bounded_int)
    except RecursionError:
        raise _too_deep() from None
    _check_depth(value)
    return value


class BoundedJSONProvider(DefaultJSONProvider):
    """Flask's JSON provider with the bounded parser; responses keep their field order."""

    sort_keys = False

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        if kwargs:  # a caller asking for its own options gets the plain parser
            return super().loads(s, **kwargs)
        return parse(s)
