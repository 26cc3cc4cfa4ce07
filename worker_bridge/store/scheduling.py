"""Writing jobs: supersede-and-insert, insert-unless-live, cancel."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    Connection,
    bindparam,
    func,
    select,
    text,
    update,
)

from worker_bridge.models import JSONType, NewJob, UTCDateTime, WorkerJob
from worker_bridge.store._common import (
    all_columns,
    cancellation_result,
    is_postgresql,
    job_from_row,
    job_values,
    jobs_table,
    lock_type_user,
)

_SUPERSEDE_AND_INSERT = (
    text(
        """
        WITH new_job AS (
            SELECT nextval(pg_get_serial_sequence('worker_jobs', 'id')) AS id
        ), cancelled AS (
            UPDATE worker_jobs AS w
            SET started = :now, finished = :now, success = false, updated_at = :now,
                task_id = NULL, heartbeat = NULL,
                result = jsonb_build_object(
                    'error', 'Cancelled: superseded by job ' || new_job.id
                             || ' of the same type and user.',
                    'cancelled', true,
                    'cancelled_by', new_job.id)
            FROM new_job
            WHERE w.type = :type AND w.user_id = :user_id AND w.finished IS NULL
              AND (w.started IS NULL OR w.started < :stale_before)
            RETURNING w.id
        )
        INSERT INTO worker_jobs (
            id, type, user_id, data, due, cron_schedule, auto_reschedule_on_failure,
            auto_reschedule_on_failure_delay, remove_delay, rescheduled_from_job,
            created_at, updated_at)
        SELECT new_job.id, :type, :user_id, :data, :due, :cron_schedule,
               :auto_reschedule_on_failure, :auto_reschedule_on_failure_delay,
               :remove_delay, :rescheduled_from_job, :now, :now
        FROM new_job
        WHERE (SELECT count(*) FROM cancelled) >= 0
        RETURNING *
        """
    )
    .bindparams(
        bindparam("data", type_=JSONType),
        bindparam("due", type_=UTCDateTime),
        bindparam("now", type_=UTCDateTime),
        bindparam("stale_before", type_=UTCDateTime),
    )
    .columns(*all_columns)
)


def supersede_and_insert(
    connection: Connection, job: NewJob, *, now: datetime, stale_before: datetime
) -> WorkerJob:
    """Cancel the pending jobs ``job`` supersedes, then insert it.

    Pending means: same type and user, not finished, and either not started or
    started before ``stale_before``. Cancelled rows get ``started = finished =
    now``, ``success = false`` and a result naming the new row.
    """
    values = job_values(job)
    if is_postgresql(connection):
        lock_type_user(connection, job.type, job.user_id)
        row = connection.execute(
            _SUPERSEDE_AND_INSERT, {**values, "now": now, "stale_before": stale_before}
        ).one()
        return job_from_row(row)
    return _supersede_and_insert_portable(connection, values, now=now, stale_before=stale_before)


def _supersede_and_insert_portable(
    connection: Connection, values: dict[str, Any], *, now: datetime, stale_before: datetime
) -> WorkerJob:
    # SQLite: one writer at a time holds the database lock, so the three
    # statements cannot interleave with another scheduler's.
    match = (
        (jobs_table.c.type == values["type"])
        & (jobs_table.c.user_id == values["user_id"])
        & jobs_table.c.finished.is_(None)
        & (jobs_table.c.started.is_(None) | (jobs_table.c.started < stale_before))
    )
    cancelled_ids = list(
        connection.execute(
            update(jobs_table)
            .where(match)
            .values(
                started=now,
                finished=now,
                success=False,
                updated_at=now,
                task_id=None,
                heartbeat=None,
            )
            .returning(jobs_table.c.id)
        ).scalars()
    )
    row = connection.execute(
        jobs_table.insert().values(**values, created_at=now, updated_at=now).returning(*all_columns)
    ).one()
    new_id = row.id
    if cancelled_ids:
        connection.execute(
            update(jobs_table)
            .where(jobs_table.c.id.in_(cancelled_ids))
            .values(
                result=cancellation_result(
                    new_id, f"Cancelled: superseded by job {new_id} of the same type and user."
                )
            )
        )
    return job_from_row(row)


def insert_unless_live(connection: Connection, job: NewJob, *, now: datetime) -> WorkerJob | None:
    """Insert ``job`` unless a live row of its type and user exists (None then)."""
    lock_type_user(connection, job.type, job.user_id)
    live = connection.execute(
        select(jobs_table.c.id)
        .where(
            (jobs_table.c.type == job.type)
            & (jobs_table.c.user_id == job.user_id)
            & jobs_table.c.finished.is_(None)
        )
        .limit(1)
    ).first()
    if live is not None:
        return None
    row = connection.execute(
        jobs_table.insert()
        .values(**job_values(job), created_at=now, updated_at=now)
        .returning(*all_columns)
    ).one()
    return job_from_row(row)


def cancel_job(connection: Connection, job_id: int, *, now: datetime, reason: str) -> bool:
    """Cancel one live row by hand; False if it was already finished or absent.

    A running row is cancelled too: its worker's finish is then refused, since
    the attempt token is cleared.
    """
    result = connection.execute(
        update(jobs_table)
        .where((jobs_table.c.id == job_id) & jobs_table.c.finished.is_(None))
        .values(
            started=func.coalesce(jobs_table.c.started, now),
            finished=now,
            success=False,
            result=cancellation_result(None, reason),
            task_id=None,
            heartbeat=None,
            updated_at=now,
        )
    )
    return result.rowcount == 1
