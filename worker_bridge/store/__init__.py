"""The only module that queries ``worker_jobs``.

Every function takes the caller's ``Connection`` and leaves the transaction to
the caller, so that several writes (and the application's own rows) can commit
or roll back together. What is PostgreSQL-specific (advisory locks,
``FOR UPDATE SKIP LOCKED``, data-modifying CTEs) stays in this module; the
portable form used on SQLite relies on SQLite allowing one writer at a time.
"""

from __future__ import annotations

from worker_bridge.store._common import cancellation_result, job_from_row, lock_type_user
from worker_bridge.store.attempts import (
    claim_job,
    describe_refusal,
    finish_job,
    refresh_heartbeats,
    wait_for_dispatch_commit,
)
from worker_bridge.store.batch import supersede_and_insert_many
from worker_bridge.store.dispatching import (
    Recovery,
    claim_due_jobs,
    count_in_flight,
    fail_unsendable,
    next_due,
    recover_lost_jobs,
)
from worker_bridge.store.queries import (
    JobStats,
    JobSummary,
    Lineage,
    job_lineage,
    job_stats,
    list_jobs,
)
from worker_bridge.store.reading import delete_removable_jobs, get_job, get_jobs
from worker_bridge.store.scheduling import cancel_job, insert_unless_live, supersede_and_insert

__all__ = [
    "JobStats",
    "JobSummary",
    "Lineage",
    "Recovery",
    "cancel_job",
    "cancellation_result",
    "claim_due_jobs",
    "claim_job",
    "count_in_flight",
    "delete_removable_jobs",
    "describe_refusal",
    "fail_unsendable",
    "finish_job",
    "get_job",
    "get_jobs",
    "insert_unless_live",
    "job_from_row",
    "job_lineage",
    "job_stats",
    "list_jobs",
    "lock_type_user",
    "next_due",
    "recover_lost_jobs",
    "refresh_heartbeats",
    "supersede_and_insert",
    "supersede_and_insert_many",
    "wait_for_dispatch_commit",
]
