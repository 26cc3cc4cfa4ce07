"""The only module that queries ``worker_jobs``.

Every function takes the caller's ``Connection`` and leaves the transaction to
the caller, so that several writes (and the application's own rows) can commit
or roll back together. What is PostgreSQL-specific (advisory locks,
``FOR UPDATE SKIP LOCKED``, data-modifying CTEs) stays in this module; the
portable form used on SQLite relies on SQLite allowing one writer at a time.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Connection, Row, Table, bindparam, delete, func, select, text, update

from worker_bridge.models import CANCELLED_MARK, JSONType, NewJob, UTCDateTime, WorkerJob

_jobs = cast(Table, WorkerJob.__table__)
_columns = list(_jobs.columns)


def job_from_row(row: Row[Any]) -> WorkerJob:
    """Build a detached ``WorkerJob`` from a full row of ``worker_jobs``."""
    return WorkerJob(**row._asdict())


def _is_postgresql(connection: Connection) -> bool:
    return connection.dialect.name == "postgresql"


def cancellation_result(cancelled_by: int | None, reason: str) -> dict[str, Any]:
    """The ``result`` a cancelled row gets."""
    return {"error": reason, CANCELLED_MARK: True, "cancelled_by": cancelled_by}


# --- scheduling --------------------------------------------------------------------------

# Serialises every writer of one (type, user_id): the partial unique index can
# only say "one unstarted job", not "cancel the stale started ones too", and
# under READ COMMITTED a second writer must see the first one's row before it
# decides what to cancel. A separate statement, because a statement's snapshot
# is taken before any lock it acquires.
_LOCK_PAIR = text("SELECT pg_advisory_xact_lock(hashtext(:type), :user_id)")

# Cancel the matching pending rows and insert the new one in one statement.
# The scalar subquery over `cancelled` in the INSERT's WHERE forces the UPDATE
# to run first, so the old row has left the one-pending index before the new
# row enters it.
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
    .columns(*_columns)
)


def _job_values(job: NewJob) -> dict[str, Any]:
    return {
        "type": job.type,
        "user_id": job.user_id,
        "data": job.data,
        "due": job.due,
        "cron_schedule": job.cron_schedule,
        "auto_reschedule_on_failure": job.auto_reschedule_on_failure,
        "auto_reschedule_on_failure_delay": job.auto_reschedule_on_failure_delay,
        "remove_delay": job.remove_delay,
        "rescheduled_from_job": job.rescheduled_from_job,
    }


def supersede_and_insert(
    connection: Connection, job: NewJob, *, now: datetime, stale_before: datetime
) -> WorkerJob:
    """Cancel the pending jobs ``job`` supersedes, then insert it.

    Pending means: same type and user, not finished, and either not started or
    started before ``stale_before``. Cancelled rows get ``started = finished =
    now``, ``success = false`` and a result naming the new row.
    """
    values = _job_values(job)
    if _is_postgresql(connection):
        connection.execute(_LOCK_PAIR, {"type": job.type, "user_id": job.user_id})
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
        (_jobs.c.type == values["type"])
        & (_jobs.c.user_id == values["user_id"])
        & _jobs.c.finished.is_(None)
        & (_jobs.c.started.is_(None) | (_jobs.c.started < stale_before))
    )
    cancelled_ids = list(
        connection.execute(
            update(_jobs)
            .where(match)
            .values(
                started=now,
                finished=now,
                success=False,
                updated_at=now,
                task_id=None,
                heartbeat=None,
            )
            .returning(_jobs.c.id)
        ).scalars()
    )
    row = connection.execute(
        _jobs.insert().values(**values, created_at=now, updated_at=now).returning(*_columns)
    ).one()
    new_id = row.id
    if cancelled_ids:
        connection.execute(
            update(_jobs)
            .where(_jobs.c.id.in_(cancelled_ids))
            .values(
                result=cancellation_result(
                    new_id, f"Cancelled: superseded by job {new_id} of the same type and user."
                )
            )
        )
    return job_from_row(row)


def cancel_job(connection: Connection, job_id: int, *, now: datetime, reason: str) -> bool:
    """Cancel one live row by hand; False if it was already finished or absent.

    A running row is cancelled too: its worker's finish is then refused, since
    the attempt token is cleared.
    """
    result = connection.execute(
        update(_jobs)
        .where((_jobs.c.id == job_id) & _jobs.c.finished.is_(None))
        .values(
            started=func.coalesce(_jobs.c.started, now),
            finished=now,
            success=False,
            result=cancellation_result(None, reason),
            task_id=None,
            heartbeat=None,
            updated_at=now,
        )
    )
    return result.rowcount == 1


# --- reading -----------------------------------------------------------------------------


def get_job(connection: Connection, job_id: int) -> WorkerJob | None:
    """The row with ``job_id``, or None."""
    row = connection.execute(select(*_columns).where(_jobs.c.id == job_id)).one_or_none()
    return None if row is None else job_from_row(row)


def get_jobs(connection: Connection, job_ids: Sequence[int]) -> list[WorkerJob]:
    """The rows with these ids, in id order; missing ids are left out."""
    rows = connection.execute(
        select(*_columns).where(_jobs.c.id.in_(list(job_ids))).order_by(_jobs.c.id)
    )
    return [job_from_row(row) for row in rows]


# --- removal -----------------------------------------------------------------------------


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
        select(_jobs.c.id)
        .where(_jobs.c.remove_at <= now)
        .union_all(
            select(_jobs.c.id).where(
                _jobs.c.success.is_(False) & (_jobs.c.finished < failed_before)
            )
        )
        .limit(limit)
    )
    result = connection.execute(delete(_jobs).where(_jobs.c.id.in_(removable)))
    return result.rowcount
