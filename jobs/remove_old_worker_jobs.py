"""System job: delete finished rows of worker_jobs that are past their keep time.

Succeeded rows go once ``finished + remove_delay`` has passed; failed and
cancelled rows are kept for ``worker_bridge_failed_retention`` (7 days by
default). Deletes in batches so a large backlog never holds one long lock.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from worker_bridge import store
from worker_bridge.params import JobParams

BATCH = 5_000


def run(params: JobParams) -> dict[str, Any]:
    now = datetime.now(UTC)
    failed_before = now - params.app.settings.failed_retention
    deleted = 0
    while True:
        with params.app.engine.begin() as connection:
            count = store.delete_removable_jobs(
                connection, now=now, failed_before=failed_before, limit=BATCH
            )
        deleted += count
        if count < BATCH:
            break
    if deleted:
        params.log.info("removed %d old worker_jobs rows", deleted)
    return {"deleted": deleted}
