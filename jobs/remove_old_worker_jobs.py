"""System job: delete finished rows of worker_jobs that are past their keep time.

Succeeded rows go once ``finished + remove_delay`` has passed; failed and
cancelled rows are kept for ``worker_bridge_failed_retention`` (7 days by
default). The work is ``worker_bridge.maintenance.removal``; the dispatcher
keeps this job scheduled every minute.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from worker_bridge.maintenance import JobRemoval
from worker_bridge.params import JobParams


def run(params: JobParams) -> dict[str, Any]:
    deleted = JobRemoval(params.app).run_once(datetime.now(UTC))
    if deleted:
        params.log.info("removed %d old worker_jobs rows", deleted)
    return {"deleted": deleted}
