"""Example cron job: records the moment it ran (schedule it every few seconds)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from worker_bridge.params import JobParams


def run(params: JobParams) -> dict[str, Any]:
    now = datetime.now(UTC)
    late_ms = (now - params.job.due).total_seconds() * 1000
    return {"ran_at": now.isoformat(), "late_ms": round(late_ms, 1)}
