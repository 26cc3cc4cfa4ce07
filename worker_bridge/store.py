"""The only module that queries ``worker_jobs``.

Every function takes the caller's ``Connection`` and leaves the transaction to
the caller, so that several writes (and the application's own rows) can commit
or roll back together. What is PostgreSQL-specific (advisory locks,
``FOR UPDATE SKIP LOCKED``, data-modifying CTEs) stays in this module; the
portable form used on SQLite relies on SQLite allowing one writer at a time.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import (
    Connection,
    Row,
    Table,
    bindparam,
    delete,
    func,
    select,
    text,
    tuple_,
    update,
)

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


def lock_type_user(connection: Connection, job_type: str, user_id: int) -> None:
    """Take the transaction-scoped lock that serialises writers of (type, user_id)."""
    if _is_postgresql(connection):
        connection.execute(_LOCK_PAIR, {"type": job_type, "user_id": user_id})


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


def insert_unless_live(connection: Connection, job: NewJob, *, now: datetime) -> WorkerJob | None:
    """Insert ``job`` unless a live row of its type and user exists (None then)."""
    lock_type_user(connection, job.type, job.user_id)
    live = connection.execute(
        select(_jobs.c.id)
        .where(
            (_jobs.c.type == job.type)
            & (_jobs.c.user_id == job.user_id)
            & _jobs.c.finished.is_(None)
        )
        .limit(1)
    ).first()
    if live is not None:
        return None
    row = connection.execute(
        _jobs.insert()
        .values(**_job_values(job), created_at=now, updated_at=now)
        .returning(*_columns)
    ).one()
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


# --- dispatching -------------------------------------------------------------------------

# Claim due rows for sending. One statement: the SELECT ... FOR UPDATE SKIP
# LOCKED picks rows no other dispatcher holds, the UPDATE marks them with a
# fresh task id (the attempt token), and the row locks last until the caller
# commits, which it does only after publishing. Other dispatchers skip the
# locked rows; a worker whose claim reaches a row first waits for the commit.
_CLAIM_DUE = (
    text(
        """
        WITH due AS (
            SELECT id FROM worker_jobs
            WHERE due <= :now AND started IS NULL AND finished IS NULL
              AND dispatched_at IS NULL
            ORDER BY due
            LIMIT :limit
            FOR UPDATE SKIP LOCKED
        )
        UPDATE worker_jobs AS w
        SET dispatched_at = :now, task_id = gen_random_uuid()::text, updated_at = :now
        FROM due
        WHERE w.id = due.id
        RETURNING w.*
        """
    )
    .bindparams(bindparam("now", type_=UTCDateTime))
    .columns(*_columns)
)


def claim_due_jobs(connection: Connection, *, now: datetime, limit: int) -> list[WorkerJob]:
    """Mark up to ``limit`` due, unsent rows as dispatched with a new task id.

    The caller publishes one message per returned row and commits after; if it
    dies first, the rows fall back to pending and the messages it did publish
    carry task ids the table never recorded, so workers refuse them.
    """
    if _is_postgresql(connection):
        rows = connection.execute(_CLAIM_DUE, {"now": now, "limit": limit})
        return sorted((job_from_row(row) for row in rows), key=lambda job: job.due)
    # SQLite: the single writer lock stands in for SKIP LOCKED.
    ids = list(
        connection.execute(
            select(_jobs.c.id)
            .where(
                (_jobs.c.due <= now)
                & _jobs.c.started.is_(None)
                & _jobs.c.finished.is_(None)
                & _jobs.c.dispatched_at.is_(None)
            )
            .order_by(_jobs.c.due)
            .limit(limit)
        ).scalars()
    )
    jobs = []
    for job_id in ids:
        row = connection.execute(
            update(_jobs)
            .where(_jobs.c.id == job_id)
            .values(dispatched_at=now, task_id=str(uuid.uuid4()), updated_at=now)
            .returning(*_columns)
        ).one()
        jobs.append(job_from_row(row))
    return jobs


def count_in_flight(connection: Connection) -> int:
    """How many live rows are dispatched but not started (messages in the broker)."""
    count: int = connection.execute(
        select(func.count())
        .select_from(_jobs)
        .where(
            _jobs.c.dispatched_at.isnot(None)
            & _jobs.c.started.is_(None)
            & _jobs.c.finished.is_(None)
        )
    ).scalar_one()
    return count


def next_due(connection: Connection) -> datetime | None:
    """The due time of the earliest unsent pending row, or None."""
    due: datetime | None = connection.execute(
        select(func.min(_jobs.c.due)).where(
            _jobs.c.started.is_(None) & _jobs.c.finished.is_(None) & _jobs.c.dispatched_at.is_(None)
        )
    ).scalar()
    return _as_utc(due)


def _as_utc(value: datetime | str | None) -> datetime | None:
    # Aggregates lose the column type, so SQLite hands back a naive string.
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def fail_unsendable(
    connection: Connection, job_ids: Sequence[int], *, now: datetime, error: str
) -> None:
    """Finish rows that cannot be sent (no module for their type) as failed."""
    if not job_ids:
        return
    connection.execute(
        update(_jobs)
        .where(_jobs.c.id.in_(list(job_ids)) & _jobs.c.finished.is_(None))
        .values(
            started=now,
            finished=now,
            success=False,
            updated_at=now,
            task_id=None,
            result={"error": error, "exception": "UnknownJobTypeError"},
        )
    )


# --- recovery ----------------------------------------------------------------------------

# Reset to pending every live row whose attempt is presumed lost:
#   - dispatched, never started, for longer than redispatch_after (lost message;
#     the caller enables this rule only when the broker queue is empty, so a
#     message still waiting in a backlog is never taken for lost);
#   - started, heartbeat older than heartbeat_timeout (dead or stalled worker);
#   - started longer ago than stale_after (the seed's rule).
# A started row whose (type, user_id) already has an unstarted pending job
# would break the one-pending invariant if reset; it is cancelled in favour of
# that job instead. pg_try_advisory_xact_lock skips pairs a scheduler holds
# right now; they are picked up on the next pass.
_RECOVER_LOST = text(
    """
        WITH lost AS (
            SELECT w.id, w.type, w.user_id, w.started IS NOT NULL AS was_started,
                   CASE
                       WHEN w.started IS NULL THEN 'dispatched but not started'
                       WHEN w.started < :stale_before THEN 'started longer than stale_after ago'
                       ELSE 'heartbeat older than heartbeat_timeout'
                   END AS reason,
                   (SELECT min(p.id) FROM worker_jobs AS p
                    WHERE p.type = w.type AND p.user_id = w.user_id
                      AND p.started IS NULL AND p.finished IS NULL) AS pending_sibling
            FROM worker_jobs AS w
            WHERE w.finished IS NULL
              AND (
                (w.started IS NULL AND w.dispatched_at < :redispatch_before
                 AND :redispatch_lost)
                OR (w.started IS NOT NULL
                    AND (w.started < :stale_before
                         OR coalesce(w.heartbeat, w.started) < :heartbeat_before))
              )
              AND (w.started IS NULL OR pg_try_advisory_xact_lock(hashtext(w.type), w.user_id))
            LIMIT :limit
            FOR UPDATE OF w SKIP LOCKED
        ), reset AS (
            UPDATE worker_jobs AS w
            SET started = NULL, dispatched_at = NULL, task_id = NULL, worker = NULL,
                heartbeat = NULL, recoveries = w.recoveries + 1, updated_at = :now
            FROM lost
            WHERE w.id = lost.id AND (NOT lost.was_started OR lost.pending_sibling IS NULL)
            RETURNING w.id, w.type, w.user_id, lost.reason, CAST(NULL AS bigint) AS cancelled_by
        ), superseded AS (
            UPDATE worker_jobs AS w
            SET finished = :now, success = false, task_id = NULL, heartbeat = NULL,
                recoveries = w.recoveries + 1, updated_at = :now,
                result = jsonb_build_object(
                    'error', 'Cancelled: its worker was lost and job ' || lost.pending_sibling
                             || ' of the same type and user is already pending.',
                    'cancelled', true,
                    'cancelled_by', lost.pending_sibling)
            FROM lost
            WHERE w.id = lost.id AND lost.was_started AND lost.pending_sibling IS NOT NULL
            RETURNING w.id, w.type, w.user_id, lost.reason, lost.pending_sibling AS cancelled_by
        )
        SELECT * FROM reset UNION ALL SELECT * FROM superseded
        """
).bindparams(
    bindparam("now", type_=UTCDateTime),
    bindparam("stale_before", type_=UTCDateTime),
    bindparam("heartbeat_before", type_=UTCDateTime),
    bindparam("redispatch_before", type_=UTCDateTime),
)


@dataclass(frozen=True, slots=True)
class Recovery:
    """A row the dispatcher took back from a lost attempt."""

    job_id: int
    type: str
    user_id: int
    #: Why the attempt was presumed lost.
    reason: str
    #: The pending job that superseded it, when it was cancelled instead of reset.
    cancelled_by: int | None


def recover_lost_jobs(
    connection: Connection,
    *,
    now: datetime,
    stale_before: datetime,
    heartbeat_before: datetime,
    redispatch_before: datetime | None,
    limit: int = 1000,
) -> list[Recovery]:
    """Put rows whose attempt is lost back to pending (see ``_RECOVER_LOST``).

    ``redispatch_before=None`` leaves dispatched-but-unstarted rows alone.
    """
    params: dict[str, Any] = {
        "redispatch_lost": redispatch_before is not None,
        "now": now,
        "stale_before": stale_before,
        "heartbeat_before": heartbeat_before,
        "redispatch_before": redispatch_before or now,
        "limit": limit,
    }
    if _is_postgresql(connection):
        rows = connection.execute(_RECOVER_LOST, params)
        return [Recovery(r.id, r.type, r.user_id, r.reason, r.cancelled_by) for r in rows]
    del params["redispatch_lost"]
    if redispatch_before is None:
        # Nothing was dispatched before the epoch: the lost-message rule matches nothing.
        params["redispatch_before"] = datetime(1970, 1, 1, tzinfo=UTC)
    return _recover_lost_portable(connection, **params)


def _recover_lost_portable(
    connection: Connection,
    *,
    now: datetime,
    stale_before: datetime,
    heartbeat_before: datetime,
    redispatch_before: datetime,
    limit: int,
) -> list[Recovery]:
    lost = connection.execute(
        select(_jobs.c.id, _jobs.c.type, _jobs.c.user_id, _jobs.c.started)
        .where(
            _jobs.c.finished.is_(None)
            & (
                (_jobs.c.started.is_(None) & (_jobs.c.dispatched_at < redispatch_before))
                | (
                    _jobs.c.started.isnot(None)
                    & (
                        (_jobs.c.started < stale_before)
                        | (func.coalesce(_jobs.c.heartbeat, _jobs.c.started) < heartbeat_before)
                    )
                )
            )
        )
        .limit(limit)
    ).all()
    recoveries = []
    for job_id, job_type, user_id, started in lost:
        if started is None:
            reason = "dispatched but not started"
        elif started < stale_before:
            reason = "started longer than stale_after ago"
        else:
            reason = "heartbeat older than heartbeat_timeout"
        sibling = None
        if started is not None:
            sibling = connection.execute(
                select(func.min(_jobs.c.id)).where(
                    (_jobs.c.type == job_type)
                    & (_jobs.c.user_id == user_id)
                    & _jobs.c.started.is_(None)
                    & _jobs.c.finished.is_(None)
                )
            ).scalar()
        values: dict[str, Any] = {
            "task_id": None,
            "heartbeat": None,
            "updated_at": now,
            "recoveries": _jobs.c.recoveries + 1,
        }
        if sibling is None:
            values.update(started=None, dispatched_at=None, worker=None)
        else:
            values.update(
                finished=now,
                success=False,
                result=cancellation_result(
                    sibling,
                    f"Cancelled: its worker was lost and job {sibling} of the same "
                    "type and user is already pending.",
                ),
            )
        connection.execute(update(_jobs).where(_jobs.c.id == job_id).values(**values))
        recoveries.append(Recovery(job_id, job_type, user_id, reason, sibling))
    return recoveries


# --- the worker's writes -----------------------------------------------------------------


def claim_job(
    connection: Connection, job_id: int, token: str, *, worker: str, now: datetime
) -> WorkerJob | None:
    """Start the attempt ``token`` of row ``job_id``; None if it may not run.

    Atomic: one conditional UPDATE. It applies only while the row still
    carries this dispatch's token and is neither started nor finished, so a
    duplicate or outdated message, a cancelled or a running row is refused.
    """
    row = connection.execute(
        update(_jobs)
        .where(
            (_jobs.c.id == job_id)
            & (_jobs.c.task_id == token)
            & _jobs.c.started.is_(None)
            & _jobs.c.finished.is_(None)
        )
        .values(
            started=now, heartbeat=now, worker=worker, attempts=_jobs.c.attempts + 1, updated_at=now
        )
        .returning(*_columns)
    ).one_or_none()
    return None if row is None else job_from_row(row)


def wait_for_dispatch_commit(connection: Connection, job_id: int, *, timeout_ms: int) -> None:
    """Block until no other transaction holds row ``job_id`` (at most ``timeout_ms``).

    A dispatcher publishes before it commits, so a fast worker's claim can see
    the row as it was before the dispatch and miss it; after this wait the
    dispatch has committed or rolled back, and a second claim sees which. Call
    inside a transaction: the lock taken here is released when it ends.
    """
    if not _is_postgresql(connection):
        return
    connection.execute(
        text("SELECT set_config('lock_timeout', :t, true)"), {"t": f"{timeout_ms}ms"}
    )
    connection.execute(select(_jobs.c.id).where(_jobs.c.id == job_id).with_for_update(read=True))


def refresh_heartbeats(
    connection: Connection, attempts: Sequence[tuple[int, str]], *, now: datetime
) -> set[int]:
    """Refresh the heartbeat of these (row id, token) attempts; return the ids still theirs."""
    if not attempts:
        return set()
    alive = connection.execute(
        update(_jobs)
        .where(
            tuple_(_jobs.c.id, _jobs.c.task_id).in_(list(attempts))
            & _jobs.c.finished.is_(None)
            & _jobs.c.started.isnot(None)
        )
        .values(heartbeat=now)
        .returning(_jobs.c.id)
    ).scalars()
    return set(alive)


def finish_job(
    connection: Connection,
    job_id: int,
    token: str,
    *,
    now: datetime,
    success: bool,
    result: Any,
    remove_at: datetime | None,
) -> bool:
    """Write the end of attempt ``token``.

    Returns False, and writes nothing, when the attempt is no longer the row's
    current one (recovered and sent again, or cancelled meanwhile).
    """
    finished = connection.execute(
        update(_jobs)
        .where(
            (_jobs.c.id == job_id)
            & (_jobs.c.task_id == token)
            & _jobs.c.started.isnot(None)
            & _jobs.c.finished.is_(None)
        )
        .values(
            finished=now,
            success=success,
            result=result,
            remove_at=remove_at,
            heartbeat=None,
            updated_at=now,
        )
    )
    return finished.rowcount == 1


def describe_refusal(connection: Connection, job_id: int, token: str) -> str:
    """Why row ``job_id`` refused attempt ``token`` (for the one log line)."""
    job = get_job(connection, job_id)
    if job is None:
        return "the row does not exist (removed, or a forged message)"
    if job.finished is not None:
        return f"the row is already {job.state.value}"
    if job.task_id != token:
        return "the message is outdated: the row was sent again under another task id"
    return "the row is already running"
