"""Process-wide logging set-up, called by entry points only (never at import)."""

from __future__ import annotations

import logging

from core.settings import Settings, load_settings


def configure_logging(level: str | None = None, settings: Settings | None = None) -> None:
    """Root logging at ``level`` (default DORADO_LOG_LEVEL), as JSON lines when
    DORADO_LOG_FORMAT=json. Raises SettingsError when the settings cannot be read."""
    settings = settings or load_settings()
    logging.basicConfig(
        level=(level or settings.log_level).upper(),
        format="%(asctime)s %(levelname)s %(name)s [%(process)d] %(message)s",
    )
    from core.observability.jsonlog import JsonFormatter

    if settings.json_logs:
        for handler in logging.getLogger().handlers:
            handler.setFormatter(JsonFormatter())
