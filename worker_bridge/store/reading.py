"""Reading rows, and deleting the ones past their keep time."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import (
    Connection,
    delete,
    select,
)

from worker_bridge.models import WorkerJob
from worker_bridge.store._common import (
    all_columns,
    job_from_row,
    jobs_table,
)


def get_job(connection: Connection, job_id: int) -> WorkerJob | None:
    """The row with ``job_id``, or None."""
    row = connection.execute(select(*all_columns).where(jobs_table.c.id == job_id)).one_or_none()
    return None if row is None else job_from_row(row)


def get_jobs(connection: Connection, job_ids: Sequence[int]) -> list[WorkerJob]:
    """The rows with these ids, in id order; missing ids are left out."""
    rows = connection.execute(
        select(*all_columns).where(jobs_table.c.id.in_(list(job_ids))).order_by(jobs_table.c.id)
    )
    return [job_from_row(row) for row in rows]


def delete_removable_jobs(
    connection: Connection, *, now: datetime, failed_before: datetime, limit: int = 10_000
) -> int:
    """Delete up to ``limit`` rows that are due for removal; return how many.

    Succeeded rows go once ``remove_at`` (finished + remove_delay) has passed;
    failed and cancelled rows once they finished before ``failed_before``.
    Rows that point to a deleted row keep living: the foreign key sets their
    ``rescheduled_from_job`` to NULL.
    """
    removable = (
        select(jobs_table.c.id)
        .where(jobs_table.c.remove_at <= now)
        .union_all(
            select(jobs_table.c.id).where(
                jobs_table.c.success.is_(False) & (jobs_table.c.finished < failed_before)
            )
        )
        .limit(limit)
    )
    result = connection.execute(delete(jobs_table).where(jobs_table.c.id.in_(removable)))
    return result.rowcount
