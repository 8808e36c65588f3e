"""Usage statistics over a period: jobs by status, queue wait and run time percentiles,
GPU-hours and trained tokens per organization.

The figures are computed in Python from the period's job rows (one query each): at this
platform's scale (thousands of jobs a week) that is simpler and as fast as SQL percentile
functions, which SQLite lacks. Definitions:

* jobs by status: jobs *created* in the period, by their current status;
* queue wait: ``started_at - created_at`` of jobs first started in the period (includes file
  validation, which is part of the wait a user sees);
* run time: ``finished_at - started_at`` of jobs finished in the period (first start to
  finish, so time spent paused or re-queued after a lost worker is included);
* run hours: the part of each job's [first start, finish] (or [first start, now] while
  running) that falls inside the period; GPU-hours are run hours times the GPUs of the worker
  that ran it last (0 on CPU workers);
* trained tokens: ``trained_tokens`` of jobs that succeeded in the period.
"""

from __future__ import annotations

import math
import re
from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.db.models import Job, Organization, Worker
from core.errors import InvalidRequest
from core.jobs.status import JobStatus
from core.timeutil import utcnow

PERCENTILES = (50, 90, 99)
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
MAX_PERIOD_SECONDS = 100 * 365 * 86400
_PERIOD = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$")


def parse_period(text: str, *, param: str = "since", allow_zero: bool = False) -> timedelta:
    """``90s``, ``30m``, ``24h``, ``7d``, ``2w`` as a timedelta (``0s`` only if allowed)."""
    match = _PERIOD.match(text or "")
    seconds = int(match.group(1)) * _UNITS[match.group(2)] if match else -1
    if not (0 if allow_zero else 1) <= seconds <= MAX_PERIOD_SECONDS:
        raise InvalidRequest(
            f"Invalid period '{text}': use a number and a unit s, m, h, d or w "
            "(e.g. 7d), at most 100 years",
            param=param,
            code="invalid_period",
        )
    return timedelta(seconds=seconds)


def percentiles(values: list[float], qs: tuple[int, ...] = PERCENTILES) -> dict[str, Any]:
    """``{"count", "p50", "p90", "p99"}`` by linear interpolation between closest ranks (numpy's
    default); None when there are no values."""
    data = sorted(values)
    out: dict[str, Any] = {"count": len(data)}
    for q in qs:
        if not data:
            out[f"p{q}"] = None
            continue
        pos = (len(data) - 1) * q / 100
        low, high = math.floor(pos), math.ceil(pos)
        out[f"p{q}"] = round(data[low] + (data[high] - data[low]) * (pos - low), 3)
    return out


@dataclass(frozen=True)
class Period:
    since: datetime
    until: datetime


def _overlap(start: datetime, end: datetime, period: Period) -> float:
    return max(0.0, (min(end, period.until) - max(start, period.since)).total_seconds())


def usage(session: Session, period: Period, organization_id: str | None = None) -> dict[str, Any]:
    """The statistics of ``period`` (optionally of one organization)."""

    def scoped(stmt):
        return (
            stmt if organization_id is None else stmt.where(Job.organization_id == organization_id)
        )

    created = list(
        session.execute(
            scoped(
                select(Job.organization_id, Job.status).where(
                    Job.created_at >= period.since, Job.created_at < period.until
                )
            )
        )
    )
    started = list(
        session.execute(
            scoped(
                select(Job.created_at, Job.started_at).where(
                    Job.started_at >= period.since, Job.started_at < period.until
                )
            )
        )
    )
    # Every job that may have run during the period (its [start, finish] overlaps it).
    ran = list(
        session.execute(
            scoped(
                select(
                    Job.organization_id,
                    Job.status,
                    Job.started_at,
                    Job.finished_at,
                    Job.trained_tokens,
                    Worker.gpus,
                )
                .outerjoin(Worker, Worker.name == Job.worker)
                .where(
                    Job.started_at.is_not(None),
                    Job.started_at < period.until,
                    (Job.finished_at.is_(None)) | (Job.finished_at >= period.since),
                )
            )
        )
    )

    by_status = Counter(status for _, status in created)
    per_org: dict[str, dict[str, Any]] = defaultdict(
        lambda: {
            "jobs": 0,
            "by_status": Counter(),
            "run_hours": 0.0,
            "gpu_hours": 0.0,
            "trained_tokens": 0,
        }
    )
    for org, status in created:
        per_org[org]["jobs"] += 1
        per_org[org]["by_status"][status] += 1
    run_times = []
    now = utcnow()
    for org, status, start, finish, tokens, gpus in ran:
        if finish is None and status != JobStatus.RUNNING:
            continue  # paused or re-queued: not on a device now, and we cannot say since when
        seconds = _overlap(start, finish or now, period)
        per_org[org]["run_hours"] += seconds / 3600
        per_org[org]["gpu_hours"] += seconds / 3600 * (gpus or 0)
        if finish is not None and period.since <= finish < period.until:
            run_times.append((finish - start).total_seconds())
            if status == JobStatus.SUCCEEDED:
                per_org[org]["trained_tokens"] += tokens or 0

    names = dict(
        session.execute(
            select(Organization.id, Organization.name).where(Organization.id.in_(list(per_org)))
        ).all()
    )
    organizations = [
        {
            "organization_id": org,
            "name": names.get(org),
            "jobs": data["jobs"],
            "by_status": dict(sorted(data["by_status"].items())),
            "run_hours": round(data["run_hours"], 4),
            "gpu_hours": round(data["gpu_hours"], 4),
            "trained_tokens": data["trained_tokens"],
        }
        for org, data in sorted(per_org.items(), key=lambda kv: (-kv[1]["jobs"], kv[0]))
    ]
    return {
        "object": "stats",
        "since": int(period.since.timestamp()),
        "until": int(period.until.timestamp()),
        "organization_id": organization_id,
        "jobs": len(created),
        "jobs_by_status": dict(sorted(by_status.items())),
        "queue_wait_seconds": percentiles([(s - c).total_seconds() for c, s in started]),
        "run_time_seconds": percentiles(run_times),
        "run_hours": round(sum(o["run_hours"] for o in organizations), 4),
        "gpu_hours": round(sum(o["gpu_hours"] for o in organizations), 4),
        "trained_tokens": sum(o["trained_tokens"] for o in organizations),
        "organizations": organizations,
    }


def period_ending_now(since: str) -> Period:
    """The period from ``since`` (e.g. ``7d``) ago until now."""
    now = utcnow()
    return Period(since=now - parse_period(since), until=now)
