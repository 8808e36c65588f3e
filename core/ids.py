"""Public identifiers in OpenAI's formats (``file-``, ``ftjob-``, ``ftevent-``, ``ftckpt_``)."""

from __future__ import annotations

import secrets
import string

_ALPHABET = string.ascii_letters + string.digits
# Bytes below this map uniformly onto the alphabet (4 x 62); the rest are drawn again.
_UNIFORM_BELOW = 256 - 256 % len(_ALPHABET)


def random_token(length: int = 24) -> str:
    """``length`` characters drawn uniformly from letters and digits by ``secrets``: one
    read of random bytes, not one per character (several ids per request)."""
    chars: list[str] = []
    while len(chars) < length:
        for byte in secrets.token_bytes(length + 8):
            if byte < _UNIFORM_BELOW:
                chars.append(_ALPHABET[byte % len(_ALPHABET)])
                if len(chars) == length:
                    break
    return "".join(chars)


def new_id(prefix: str, length: int = 24) -> str:
    return f"{prefix}{random_token(length)}"


def file_id() -> str:
    return new_id("file-")


def job_id() -> str:
    return new_id("ftjob-")


def event_id() -> str:
    return new_id("ftevent-")


def checkpoint_id() -> str:
    return new_id("ftckpt_")


def org_id() -> str:
    return new_id("org-")


def api_key_id() -> str:
    return new_id("key_")
