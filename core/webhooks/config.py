"""The operator's webhook settings (``DORADO_WEBHOOKS_*``, fields of
:class:`core.settings.Settings`) as the delivery code uses them."""

from __future__ import annotations

from dataclasses import dataclass

from core.settings import Settings


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


def webhook_config(settings: Settings) -> WebhookConfig:
    """The webhook part of ``settings`` (validated when Settings was loaded, at startup)."""
    return WebhookConfig(
        allow_private=settings.webhooks_allow_private,
        timeout_seconds=settings.webhooks_timeout_seconds,
        max_attempts=settings.webhooks_max_attempts,
        retry_base_seconds=settings.webhooks_retry_base_seconds,
        retry_max_seconds=settings.webhooks_retry_max_seconds,
        concurrency=settings.webhooks_concurrency,
        poll_seconds=settings.webhooks_poll_seconds,
    )
