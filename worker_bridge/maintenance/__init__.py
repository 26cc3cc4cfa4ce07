"""The table's maintenance services, one module each, each with ``run_once(now)``.

- ``recovery``: takes back the rows whose attempt was lost (dead worker, lost message);
- ``removal``: deletes finished rows past their keep time, and keeps the
  ``remove_old_worker_jobs`` cron job that runs it alive.

A service's ``run_once(now)`` is one pass that returns what it did; the
dispatcher calls recovery from its loop, and the removal job calls removal.
"""

from __future__ import annotations

from worker_bridge.maintenance.recovery import JobRecovery
from worker_bridge.maintenance.removal import REMOVAL_JOB, JobRemoval

__all__ = ["REMOVAL_JOB", "JobRecovery", "JobRemoval"]
