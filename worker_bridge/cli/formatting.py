"""Output helpers of the ``worker-bridge`` command: aligned columns, cells, JSON.

No argparse and no database access here: these functions only turn values (rows,
jobs, timestamps) into text, for the command handlers and the demo.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from worker_bridge.job import FIELDS, Job
from worker_bridge.store import JobSummary

__all__ = [
    "SUMMARY_HEADERS",
    "cell",
    "duration",
    "format_table",
    "job_dict",
    "print_json",
    "stamp",
    "summary_row",
]


def _json_default(value: object) -> object:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def print_json(value: object) -> None:
    """Print ``value`` as indented JSON; datetimes become ISO-8601 strings."""
    print(json.dumps(value, default=_json_default, indent=2))


def stamp(value: datetime) -> str:
    """A timestamp in UTC to the second, e.g. ``2030-01-31T09:00:00Z``."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def cell(value: object) -> str:
    """One table cell: ``-`` for None, a UTC stamp for a datetime, else one printable line."""
    if value is None:
        return "-"
    if isinstance(value, datetime):
        return stamp(value)
    # A cell is one line: a control character would break the columns.
    return "".join(ch if ch.isprintable() else " " for ch in str(value))


def format_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Plain columns, left-aligned, two spaces apart."""
    cells = [[cell(value) for value in row] for row in rows]
    widths = [max([len(h), *(len(row[i]) for row in cells)]) for i, h in enumerate(headers)]
    lines = [list(headers), *cells]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in lines
    )


def duration(delta: timedelta) -> str:
    """A length of time, e.g. ``1d 2h 5s``; ``0s`` under a second. The sign is dropped."""
    seconds = int(abs(delta.total_seconds()))
    parts = [
        (seconds // 86400, "d"),
        (seconds // 3600 % 24, "h"),
        (seconds // 60 % 60, "m"),
        (seconds % 60, "s"),
    ]
    return " ".join(f"{n}{unit}" for n, unit in parts if n) or "0s"


def job_dict(job: Job) -> dict[str, Any]:
    """Every column of the row, and its derived status."""
    row = {name: getattr(job, name) for name in FIELDS}
    return {**row, "status": job.state.value}


SUMMARY_HEADERS = ("ID", "TYPE", "USER", "STATUS", "DUE", "FINISHED", "ATTEMPTS", "CRON", "FROM")


def summary_row(job: JobSummary | Job) -> list[object]:
    """The cells of ``job`` under :data:`SUMMARY_HEADERS`."""
    status = job.state if isinstance(job, Job) else job.status
    return [
        job.id,
        job.type,
        job.user_id,
        status.value,
        job.due,
        job.finished,
        job.attempts,
        job.cron_schedule,
        job.rescheduled_from_job,
    ]
