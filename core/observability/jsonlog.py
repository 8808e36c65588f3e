"""One JSON object per log line, for log shippers (Loki, Elasticsearch, Cloud Logging).

Opt-in with ``DORADO_LOG_FORMAT=json`` (``core.observability.logconfig`` installs
:class:`JsonFormatter`).
Each line carries ``ts``, ``level``, ``logger``, ``pid``, ``message`` and, when the record has
one, ``job_id``: taken from ``extra={"job_id": ...}`` or else found in the message, since the
code logs job ids as ``%s`` arguments (``"published job %s"``).
"""

from __future__ import annotations

import json
import logging
import re
from datetime import datetime, timezone

JOB_ID_PATTERN = re.compile(r"\bftjob-[A-Za-z0-9]+\b")
#: Attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message",
    "asctime",
    "taskName",
}


def json_logging_requested() -> bool:
    """True when ``DORADO_LOG_FORMAT`` asks for JSON lines."""
    from core.settings import load_settings

    return load_settings().json_logs


class JsonFormatter(logging.Formatter):
    """Formats a record as a single-line JSON object."""

    def format(self, record: logging.LogRecord) -> str:
        """Return the JSON line (no trailing newline; the handler adds it)."""
        message = record.getMessage()
        entry: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, timezone.utc)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "pid": record.process,
            "message": message,
        }
        job_id = getattr(record, "job_id", None)
        if job_id is None:
            found = JOB_ID_PATTERN.search(message)
            job_id = found.group(0) if found else None
        if job_id is not None:
            entry["job_id"] = str(job_id)
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRS and key not in entry:
                entry[key] = value
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack_info"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=str, ensure_ascii=False)
