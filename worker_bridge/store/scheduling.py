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
from sqlalchemy.exc import IntegrityError

from worker_bridge.errors import PendingJobConflictError
from worker_bridge.models import JSONType, NewJob, UTCDateTime, WorkerJob
from worker_bridge.store._common import (
    PAIR_LOCK_KEYS,
    DriverStatement,
    all_columns,
    cancellation_result,
    is_postgresql,
    job_from_row,
    job_values,
    jobs_table,
    lock_type_user,
)

_ONE_PENDING_INDEX = "uq_worker_jobs_one_pending"

# Cancel the matching pending rows and insert the new one in one statement.
#  - The statement takes the pair's lock itself, before it locks or inserts any
#    row: the UPDATE's condition needs `pair_lock` (an InitPlan, run before the
#    first row is locked) and the new id is drawn from it. So a writer that
#    holds the lock (scheduling in the caller's transaction takes it in a
#    statement of its own first, and sees every row committed before it got
#    it) never meets a row this statement inserted behind its back: at worst
#    this statement, whose snapshot predates the wait, meets the one-pending
#    unique index, and the caller retries.
#  - The scalar subquery over `cancelled` in the INSERT's WHERE forces the
#    UPDATE to run first, so the old row has left the one-pending index
#    before the new row enters it.
_SUPERSEDE_AND_INSERT = (
    text(
        """
        WITH pair_lock AS MATERIALIZED (
            SELECT true AS held FROM (
                SELECT pg_advisory_xact_lock(
                    :lock_class, (hashtext(:type) # hashint4(:user_id)) & :lock_mask)) AS l
        ), new_job AS (
            SELECT nextval(pg_get_serial_sequence('worker_jobs', 'id')) AS id FROM pair_lock
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
              AND (SELECT held FROM pair_lock)
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
        **PAIR_LOCK_KEYS,
    )
    .columns(*all_columns)
)
# schedule_job's one statement; see DriverStatement for why on the driver.
_SUPERSEDE_AND_INSERT_ON_DRIVER = DriverStatement(_SUPERSEDE_AND_INSERT, json=("data",))


def supersede_and_insert(
    connection: Connection,
    job: NewJob,
    *,
    now: datetime,
    stale_before: datetime,
    serialize: bool = True,
) -> WorkerJob:
    """Cancel the pending jobs ``job`` supersedes, then insert it.

    Pending means: same type and user, not finished, and either not started or
    started before ``stale_before``. Cancelled rows get ``started = finished =
    now``, ``success = false`` and a result naming the new row.

    With ``serialize`` (the default) it first takes the pair's lock, so it
    waits for a concurrent writer instead of failing. Without it, on an
    autocommit connection, it is one round trip, and a concurrent writer's
    pending row makes it raise :class:`PendingJobConflictError` (the caller
    retries, and the retry cancels that row).
    """
    values = job_values(job)
    if is_postgresql(connection):
        if serialize:
            lock_type_user(connection, job.type, job.user_id)
        params = {**values, "now": now, "stale_before": stale_before}
        try:
            row = _SUPERSEDE_AND_INSERT_ON_DRIVER.execute(connection, params).fetchone()
        except IntegrityError as exc:
            if _ONE_PENDING_INDEX in str(exc.orig):
                raise PendingJobConflictError(
                    f"another writer scheduled a {job.type} job for user {job.user_id} first"
                ) from exc
            raise
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
