"""The operator's webhook settings, read in one place.

``core/settings.py`` is being reworked; until these become fields of ``Settings`` they are read
from the environment here, so that only :func:`webhook_config` has to change then.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

TRUE = {"1", "true", "yes", "on"}


@dataclass(frozen=True)
class WebhookConfig:
    # Deliver to loopback, private, link-local and metadata addresses (tests, closed networks).
    allow_private: bool = False
    # Longest a receiver may take to accept the connection and answer, per attempt.
    timeout_seconds: float = 10.0
    max_attempts: int = 12
    # Attempt n waits about base * 2**(n-1) seconds (jittered), at most retry_max_seconds:
    # with the defaults, twelve attempts spread over about nine hours.
    retry_base_seconds: float = 30.0
    retry_max_seconds: float = 4 * 3600.0
    # Deliveries in flight at once: a hanging receiver holds one slot, not the loop.
    concurrency: int = 16
    poll_seconds: float = 0.5


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw in (None, ""):
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name} must be a number, not {raw!r}") from None
    if value <= 0:
        raise ValueError(f"{name} must be positive, not {raw!r}")
    return value


def webhook_config(env: Mapping[str, str] | None = None) -> WebhookConfig:
    """Read ``DORADO_WEBHOOKS_*`` variables (``DORADO_WEBHOOKS_ALLOW_PRIVATE``,
    ``_TIMEOUT_SECONDS``, ``_MAX_ATTEMPTS``, ``_RETRY_BASE_SECONDS``, ``_RETRY_MAX_SECONDS``,
    ``_CONCURRENCY``, ``_POLL_SECONDS``)."""
    env = os.environ if env is None else env
    d = WebhookConfig()
    return WebhookConfig(
        allow_private=env.get("DORADO_WEBHOOKS_ALLOW_PRIVATE", "").strip().lower() in TRUE,
        timeout_seconds=_float(env, "DORADO_WEBHOOKS_TIMEOUT_SECONDS", d.timeout_seconds),
        max_attempts=int(_float(env, "DORADO_WEBHOOKS_MAX_ATTEMPTS", d.max_attempts)),
        retry_base_seconds=_float(env, "DORADO_WEBHOOKS_RETRY_BASE_SECONDS", d.retry_base_seconds),
        retry_max_seconds=_float(env, "DORADO_WEBHOOKS_RETRY_MAX_SECONDS", d.retry_max_seconds),
        concurrency=int(_float(env, "DORADO_WEBHOOKS_CONCURRENCY", d.concurrency)),
        poll_seconds=_float(env, "DORADO_WEBHOOKS_POLL_SECONDS", d.poll_seconds),
    )
