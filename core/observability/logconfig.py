"""Process-wide logging set-up, called by entry points only (never at import)."""

from __future__ import annotations

import logging
import os


def configure_logging(level: str | None = None) -> None:
    logging.basicConfig(
        level=(level or os.environ.get("DORADO_LOG_LEVEL", "INFO")).upper(),
        format="%(asctime)s %(levelname)s %(name)s [%(process)d] %(message)s",
    )
    from core.observability.jsonlog import JsonFormatter, json_logging_requested

    if json_logging_requested():  # DORADO_LOG_FORMAT=json: one JSON object per line
        for handler in logging.getLogger().handlers:
            handler.setFormatter(JsonFormatter())
