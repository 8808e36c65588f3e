"""Event types and the payload shape OpenAI sends (``object: "event"``, ``data.id``)."""

from __future__ import annotations

import json
from datetime import datetime

from core.timeutil import to_unix

SUCCEEDED = "fine_tuning.job.succeeded"
FAILED = "fine_tuning.job.failed"
CANCELLED = "fine_tuning.job.cancelled"
PAUSED = "fine_tuning.job.paused"  # Dorado's own
CHECKPOINT = "fine_tuning.job.checkpoint"  # Dorado's own: a checkpoint was saved
EVENT_TYPES = (SUCCEEDED, FAILED, CANCELLED, PAUSED, CHECKPOINT)


def payload(event_id: str, event_type: str, created_at: datetime, job_id: str) -> bytes:
    """The exact bytes sent (and signed) for an event."""
    body = {
        "id": event_id,
        "object": "event",
        "created_at": to_unix(created_at),
        "type": event_type,
        "data": {"id": job_id},
    }
    return json.dumps(body, separators=(",", ":")).encode()
