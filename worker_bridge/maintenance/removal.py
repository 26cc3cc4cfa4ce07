"""Removal: delete finished rows past their keep time, in batches.

Succeeded rows go once ``finished + remove_delay`` has passed; failed and
cancelled rows are kept for ``worker_bridge_failed_retention`` (7 days by
default). It runs as the system cron job ``remove_old_worker_jobs`` (user 0,
every minute, retried on failure), which the dispatcher keeps alive.
"""

from __future__ import annotations

import logging
from datetime import datetime

from worker_bridge.bridge import BridgeApp
from worker_bridge.cron import next_fire
from worker_bridge.job import Job, NewJob

logger = logging.getLogger(__name__)

#: The job type that runs removal.
REMOVAL_JOB = "remove_old_worker_jobs"
REMOVAL_CRON = "* * * * *"
#: Retry delay of the removal job after a failure, in ms.
REMOVAL_RETRY_DELAY_MS = 60_000


class JobRemoval:
    """The removal service of one bridge."""

    #: Rows deleted per transaction, so a large backlog never holds one long lock.
    batch = 5_000

    def __init__(self, bridge: BridgeApp) -> None:
        self.bridge = bridge

    def run_once(self, now: datetime) -> int:
        """Delete every row due for removal at ``now``; return how many."""
        failed_before = now - self.bridge.settings.failed_retention
        deleted = 0
        while True:
            with self.bridge.engine.begin() as connection:
                count = self.bridge.store.delete_removable_jobs(
                    connection, now=now, failed_before=failed_before, limit=self.batch
                )
            deleted += count
            if count < self.batch:
                return deleted

    def ensure_job(self, now: datetime) -> Job | None:
        """Make sure the removal cron job exists; leave a live one alone.

        Returns the row it created, or None (one was live, or the jobs package
        has no removal module, which is logged).
        """
        jobs = self.bridge.jobs
        if REMOVAL_JOB not in jobs.known_types():
            logger.warning(
                "the jobs package %r has no %s module: old rows will not be removed",
                jobs.package,
                REMOVAL_JOB,
            )
            return None
        job = NewJob(
            type=REMOVAL_JOB,
            user_id=0,
            data={},
            due=next_fire(REMOVAL_CRON, now, self.bridge.settings.timezone),
            cron_schedule=REMOVAL_CRON,
            auto_reschedule_on_failure=True,
            auto_reschedule_on_failure_delay=REMOVAL_RETRY_DELAY_MS,
        )
        with self.bridge.engine.begin() as connection:
            created = self.bridge.store.insert_unless_live(connection, job, now=now)
        if created is not None:
            logger.info("scheduled %s as job %s (every minute)", REMOVAL_JOB, created.id)
        return created
